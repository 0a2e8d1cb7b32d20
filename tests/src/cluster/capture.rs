//! Capturing datagrams off a node's interface, to replay or tamper with them in tests.
//!
//! A packet socket (`AF_PACKET`, `SOCK_DGRAM`, IPv4 only) bound to one interface sees every IPv4
//! packet that crosses it, in both directions, with the link header removed. Call
//! [`capture_udp`] inside the node's namespace ([`super::Cluster::in_node`]).

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const ETH_P_IP: u16 = 0x0800;

/// Waits up to `timeout` for a UDP datagram to `dst` crossing interface `iface` whose payload
/// satisfies `want`, and returns that payload. Runs in the caller's network namespace.
pub fn capture_udp(
    iface: &str,
    dst: SocketAddrV4,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>> {
    let fd = packet_socket(iface, libc::SOCK_DGRAM, ETH_P_IP)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        // SAFETY: recv(2) into our buffer, bounded by its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(payload) = udp_payload_to(&buf[..n as usize], dst) {
            if want(payload) {
                return Ok(payload.to_vec());
            }
        }
    }
    bail!("no matching datagram to {dst} on {iface} within {timeout:?}")
}

/// A packet socket (`AF_PACKET`) of `kind` (`SOCK_DGRAM`: link header removed; `SOCK_RAW`:
/// whole frames) bound to interface `iface` for ethertype `protocol`, whose reads time out
/// after 100 ms. Runs in the caller's network namespace.
pub fn packet_socket(iface: &str, kind: i32, protocol: u16) -> Result<OwnedFd> {
    let ifindex = interface_index(iface)?;
    // SAFETY: socket(2) with plain integer arguments; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            kind | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("open a packet socket");
    }
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value that we then fill in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: bind(2) on our descriptor with a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("bind the packet socket");
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt(2) with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// The payload of an IPv4 UDP packet addressed to `dst`.
fn udp_payload_to(packet: &[u8], dst: SocketAddrV4) -> Option<&[u8]> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    if packet[16..20] != dst.ip().octets() || total < ihl + 8 {
        return None;
    }
    let udp = &packet[ihl..total];
    (u16::from_be_bytes([udp[2], udp[3]]) == dst.port()).then(|| &udp[8..])
}

fn interface_index(name: &str) -> Result<i32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {name}"));
    }
    Ok(index as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_udp_to_the_destination_only() {
        let mut p = vec![0u8; 20 + 8 + 3];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(31u16).to_be_bytes());
        p[9] = 17;
        p[16..20].copy_from_slice(&[198, 18, 0, 1]);
        p[22..24].copy_from_slice(&9747u16.to_be_bytes());
        p[28..31].copy_from_slice(b"GW!");
        let dst: SocketAddrV4 = "198.18.0.1:9747".parse().unwrap();
        assert_eq!(udp_payload_to(&p, dst), Some(&b"GW!"[..]));
        assert_eq!(udp_payload_to(&p, "198.18.0.2:9747".parse().unwrap()), None);
        assert_eq!(udp_payload_to(&p, "198.18.0.1:9748".parse().unwrap()), None);
        p[9] = 6;
        assert_eq!(udp_payload_to(&p, dst), None);
        assert_eq!(udp_payload_to(&p[..10], dst), None);
    }
}
