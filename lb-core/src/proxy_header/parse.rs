//! Reading a PROXY header (v1 or v2) from the first bytes a trusted peer
//! sent: complete, incomplete (read more), or refused with a reason.
