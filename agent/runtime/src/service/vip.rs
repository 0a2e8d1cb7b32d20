//! Virtual IPs: the address is added to the node's interface while the service is healthy
//! and removed when it stops; for IPv4 a gratuitous ARP tells the segment where it now lives.
//! The address is added, removed and looked for by netlink ([`super::netlink`]): no `ip`
//! process, so each takes microseconds rather than a fork and an exec.
//!
//! IPv6: the address is added with `nodad`, so it is usable at once rather than tentative
//! for the duplicate address detection (the VIP moves between nodes on purpose, and the
//! previous holder has dropped it). Then an unsolicited neighbour advertisement (ICMPv6 136,
//! override flag, target and target link-layer address option) goes to all nodes (`ff02::1`)
//! with hop limit 255 from the VIP itself, so neighbours replace the old holder's MAC address
//! in their caches.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, OnceLock};

use super::error::ServiceError;
use super::netlink;

/// The first interface (by name) that is up and not loopback, for VIPs when none is
/// configured. Asked of the kernel in this process's network namespace.
pub fn default_interface() -> Option<String> {
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry, or null; freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return None;
    }
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: within the array, up to and including the terminating entry.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
        i += 1;
    }
    // SAFETY: the array from if_nameindex, freed once.
    unsafe { libc::if_freenameindex(list) };
    names.sort();
    names
        .into_iter()
        .find(|n| flags(n).is_some_and(|f| f & libc::IFF_UP != 0 && f & libc::IFF_LOOPBACK == 0))
}

/// The interface's flags (`SIOCGIFFLAGS`).
fn flags(iface: &str) -> Option<i32> {
    let req = ifreq_ioctl(iface, libc::SIOCGIFFLAGS).ok()?;
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    Some(i32::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Runs an interface ioctl on a throwaway socket of this network namespace.
fn ifreq_ioctl(iface: &str, request: libc::c_ulong) -> std::io::Result<libc::ifreq> {
    // SAFETY: socket(2) with constant arguments; checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is valid and then filled in.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name {iface:?} too long"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the request fills the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(req)
}

fn prefix(vip: IpAddr) -> u8 {
    if vip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The VIP's error for `what` failing.
fn vip_error(vip: IpAddr, iface: &str, what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Vip(format!("{what} {vip}/{} on {iface}: {e}", prefix(vip)))
}

/// True when `vip` is on `iface` (with any prefix; false when there is no such interface).
pub fn present(vip: IpAddr, iface: &str) -> bool {
    netlink::interface_index(iface)
        .and_then(|index| netlink::has_address(index, vip))
        .unwrap_or(false)
}

/// Puts `vip` on `iface` if it is not there (`/32` or `/128`, IPv6 without duplicate
/// address detection), without announcing it.
pub fn assign(vip: IpAddr, iface: &str) -> Result<(), ServiceError> {
    let index = netlink::interface_index(iface).map_err(|e| vip_error(vip, iface, "add", e))?;
    let flags = if vip.is_ipv6() {
        netlink::IFA_F_NODAD
    } else {
        0
    };
    netlink::add_address(index, vip, prefix(vip), flags)
        .map(|_added_or_there| ())
        .map_err(|e| vip_error(vip, iface, "add", e))
}

/// Tells the segment that `vip` is now on `iface`: a gratuitous ARP (IPv4) or an unsolicited
/// neighbour advertisement (IPv6).
pub fn announce(vip: IpAddr, iface: &str) -> std::io::Result<()> {
    match vip {
        IpAddr::V4(v4) => gratuitous_arp(v4, iface),
        IpAddr::V6(v6) => unsolicited_na(v6, iface),
    }
}

/// Adds `vip` to `iface` (if missing; IPv6 without duplicate address detection) and
/// announces it.
pub fn add(vip: IpAddr, iface: &str) -> Result<(), ServiceError> {
    assign(vip, iface)?;
    if let Err(e) = announce(vip, iface) {
        tracing::warn!(%vip, iface, error = %e, "the VIP was not announced");
    }
    Ok(())
}

/// Removes `vip` from `iface` (if present; nothing to do when the interface is gone).
pub fn remove(vip: IpAddr, iface: &str) -> Result<(), ServiceError> {
    let Ok(index) = netlink::interface_index(iface) else {
        return Ok(());
    };
    netlink::delete_address(index, vip, prefix(vip))
        .map(|_deleted_or_gone| ())
        .map_err(|e| vip_error(vip, iface, "delete", e))
}

/// Broadcasts an ARP request for `vip` from `vip` (a gratuitous ARP), so neighbours update
/// their caches to this interface's MAC address.
pub fn gratuitous_arp(vip: std::net::Ipv4Addr, iface: &str) -> std::io::Result<()> {
    let mac = hardware_address(iface)?;
    let c = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    const ETH_P_ARP: u16 = 0x0806;
    // Protocol 0: a socket that only sends (the frames' protocol is in the address), so it
    // takes no copy of the ARP traffic while it is open.
    // SAFETY: socket(2) with constant arguments; checked below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = PacketSocket(Some(unsafe { OwnedFd::from_raw_fd(raw) }));
    // Both forms, as keepalived does: some hosts act on the request, some on the reply.
    let frame = |op: u8| {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&mac);
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]); // Ethernet, IPv4, request or reply
        f.extend_from_slice(&mac);
        f.extend_from_slice(&vip.octets());
        f.extend_from_slice(if op == 1 { &[0; 6] } else { &[0xff; 6] });
        f.extend_from_slice(&vip.octets());
        f
    };
    // SAFETY: sockaddr_ll is plain data; zeroed is valid and then filled in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for f in [frame(1), frame(2)] {
        // SAFETY: sendto(2) with our buffer and a correctly sized sockaddr_ll.
        let sent = unsafe {
            libc::sendto(
                fd.raw(),
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A packet socket that is closed on a thread of its own: the kernel waits for an RCU grace
/// period when one closes (`synchronize_net` in `packet_release`: 6 to 14 ms measured here),
/// which would delay the cut-over's announcement, or the supervisor, by that much.
struct PacketSocket(Option<OwnedFd>);

impl PacketSocket {
    fn raw(&self) -> std::os::fd::RawFd {
        self.0.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        static CLOSER: OnceLock<Option<mpsc::Sender<OwnedFd>>> = OnceLock::new();
        let Some(fd) = self.0.take() else { return };
        let closer = CLOSER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<OwnedFd>();
            std::thread::Builder::new()
                .name("godwit-close".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| tx)
        });
        // Without the thread (or with it gone) it is closed here, late but closed.
        if let Some(tx) = closer {
            let _ = tx.send(fd);
        }
    }
}

/// Sends an unsolicited neighbour advertisement for `vip` (RFC 4861 7.2.6) from `iface`:
/// ICMPv6 type 136 with the override flag, target `vip` and this interface's MAC address as
/// the target link-layer address, from `vip` to `ff02::1`, hop limit 255. The kernel fills in
/// the IPv6 header and the ICMPv6 checksum of a raw ICMPv6 socket.
pub fn unsolicited_na(vip: std::net::Ipv6Addr, iface: &str) -> std::io::Result<()> {
    let mac = hardware_address(iface)?;
    let c = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let set = |level: i32, name: i32, value: i32| -> std::io::Result<()> {
        // SAFETY: setsockopt(2) with an int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // Neighbour discovery packets must arrive with hop limit 255 (RFC 4861 7.1.2).
    set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255)?;
    set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, index as i32)?;
    set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
    // From the VIP itself (usable at once: it was added with nodad).
    // SAFETY: sockaddr_in6 is plain data; zeroed is valid and then filled in.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    src.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    src.sin6_addr.s6_addr = vip.octets();
    if vip.is_unicast_link_local() {
        src.sin6_scope_id = index;
    }
    // SAFETY: bind(2) on our descriptor with a correctly sized sockaddr_in6.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&src).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let packet = neighbour_advertisement(vip, mac);
    // SAFETY: sockaddr_in6 is plain data; zeroed is valid and then filled in.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    dst.sin6_addr.s6_addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = index;
    // SAFETY: sendto(2) with our buffer and a correctly sized sockaddr_in6.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::from_ref(&dst).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The ICMPv6 message of an unsolicited neighbour advertisement (checksum left 0 for the
/// kernel): type 136, code 0, flags with only override (0x20), the target, and the target
/// link-layer address option (type 2, length 1 = 8 bytes).
fn neighbour_advertisement(target: std::net::Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&[136, 0, 0, 0]);
    p.extend_from_slice(&[0x20, 0, 0, 0]);
    p.extend_from_slice(&target.octets());
    p.extend_from_slice(&[2, 1]);
    p.extend_from_slice(&mac);
    p
}

/// The interface's MAC address, asked of the kernel in this process's network namespace
/// (`SIOCGIFHWADDR`). `/sys/class/net` shows the namespace sysfs was mounted in, which for an
/// agent started by `setns` is not its own.
fn hardware_address(iface: &str) -> std::io::Result<[u8; 6]> {
    let req = ifreq_ioctl(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: after SIOCGIFHWADDR the union holds a sockaddr with the address in sa_data.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_neighbour_advertisement_has_the_override_flag_target_and_mac() {
        let target: std::net::Ipv6Addr = "fd00:18::64".parse().unwrap();
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let p = neighbour_advertisement(target, mac);
        assert_eq!(p.len(), 32);
        assert_eq!(
            &p[..4],
            &[136, 0, 0, 0],
            "type, code, checksum for the kernel"
        );
        assert_eq!(p[4], 0x20, "override, not router, not solicited");
        assert_eq!(&p[8..24], &target.octets());
        assert_eq!(&p[24..26], &[2, 1], "target link-layer address, 8 bytes");
        assert_eq!(&p[26..], &mac);
    }
}
