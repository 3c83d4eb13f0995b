//! Writing a PROXY header (v1 text, v2 binary) for a client connection
//! or a health probe.
