//! A minimal HTTP/1.1 GET with a deadline, for querying agents' APIs.

use std::net::SocketAddr;
use std::time::Duration;

/// GETs `path` from `addr`; connecting and reading each give up after `timeout`. Returns the
/// status code and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    crate::http_request_within(addr, "GET", path, None, timeout)
}
