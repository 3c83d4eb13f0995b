//! What the tests of several areas share: waits with deadlines, loopback
//! backends and clients, an HTTP/1.1 response reader, and the servers the
//! health checks probe. One definition of each helper.

pub(crate) mod health_servers;
pub(crate) mod loopback;
pub(crate) mod response;
pub(crate) mod wait;
