//! A small rtnetlink client (`NETLINK_ROUTE`): add, delete and list an interface's addresses
//! by asking the kernel directly, where running `ip` costs a fork and an exec (about 10 ms on
//! a busy node, in the middle of a migration's cut-over).
//!
//! Each call opens a socket of its own in the calling thread's network namespace, sends one
//! request and reads until the kernel's answer: a request is acknowledged (`NLM_F_ACK`) and
//! returns only once the kernel has applied it or refused it, so an address added is on the
//! interface when [`add_address`] returns. A refusal is the kernel's errno, with its extended
//! message when it gives one (`NETLINK_EXT_ACK`).
//!
//! The rust-netlink crates do the work: `netlink-packet-route` encodes the requests and
//! decodes the listed addresses, `netlink-packet-core` frames the messages and reads the
//! acknowledgements (the extended message is found with its attribute iterator), and
//! `netlink-sys` is the socket (`socket2` sets its receive timeout). The one raw `libc` call
//! left, and the one `unsafe`, is `if_nametoindex(3)` in [`interface_index`]: none of these
//! crates offers it (`nix` does, a dependency for one call), and asking by `RTM_GETLINK`
//! instead would put a netlink round trip and the kernel's whole link record, where libc
//! does one ioctl, on the cut-over's hand-off path.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, Parseable, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeader, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The previous, hand-written implementation: the tests' byte-level message builder and the
/// timing test's baseline.
#[cfg(test)]
mod handwritten;
#[cfg(test)]
use handwritten::{octets, Message, IFA_ADDRESS, IFA_FLAGS};
#[cfg(test)]
use std::net::Ipv4Addr;

/// `NLMSG_HDRLEN`: the netlink header's length.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the extended acknowledgement's message (`linux/netlink.h`).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `RTM_NEWADDR`, the type of each message of an address dump (`linux/rtnetlink.h`).
const RTM_NEWADDR: u16 = libc::RTM_NEWADDR;
const RT_SCOPE_UNIVERSE: u8 = libc::RT_SCOPE_UNIVERSE;
const RT_SCOPE_HOST: u8 = libc::RT_SCOPE_HOST;
/// The address's flag for "no duplicate address detection" (IPv6).
pub const IFA_F_NODAD: u32 = AddressFlags::Nodad.bits();
/// Duplicate address detection found the address on another node (IPv6).
pub const IFA_F_DADFAILED: u32 = AddressFlags::Dadfailed.bits();
/// Not usable yet: duplicate address detection is running (IPv6).
pub const IFA_F_TENTATIVE: u32 = AddressFlags::Tentative.bits();

/// How long a call waits for the kernel's answer (it answers at once; this only bounds a
/// kernel that does not).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// A dump the kernel reports as interrupted (the addresses changed while it ran) is asked
/// again this many times.
const DUMP_TRIES: usize = 3;

/// Sequence numbers of this process's requests (a reply is matched to its request).
static SEQ: AtomicU32 = AtomicU32::new(1);

/// What a netlink call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request: its errno, and its extended message if it gave one.
    #[error("{op}: {}", kernel_text(*errno, message.as_deref()))]
    Kernel {
        /// What was asked.
        op: &'static str,
        /// The errno.
        errno: i32,
        /// `NLMSGERR_ATTR_MSG`.
        message: Option<String>,
    },
    /// No such interface.
    #[error("interface {name:?}: {source}")]
    Interface {
        /// Its name.
        name: String,
        /// From `if_nametoindex`.
        source: io::Error,
    },
    /// The socket failed, or the answer did not make sense.
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
}

fn kernel_text(errno: i32, message: Option<&str>) -> String {
    let os = io::Error::from_raw_os_error(errno);
    match message {
        Some(m) => format!("{os} ({m})"),
        None => os.to_string(),
    }
}

impl NetlinkError {
    /// The kernel's errno for a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// An address of an interface, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The interface's index.
    pub index: u32,
    /// The address (the local one; for a point-to-point address not the peer's).
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// `RT_SCOPE_*`: 0 global, 253 link, 254 host.
    pub scope: u8,
    /// `IFA_F_*` (the 32-bit `IFA_FLAGS` when the kernel gives it).
    pub flags: u32,
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn interface_index(name: &str) -> Result<u32, NetlinkError> {
    let fail = |source| NetlinkError::Interface {
        name: name.to_string(),
        source,
    };
    let c = std::ffi::CString::new(name).map_err(|_| {
        fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NUL in the name",
        ))
    })?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    Ok(index)
}

/// The scope `ip addr add` gives an address when none is named: host for 127.0.0.0/8,
/// global for everything else (iproute2's `default_scope`).
pub fn default_scope(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(v4) if v4.octets()[0] == 127 => RT_SCOPE_HOST,
        _ => RT_SCOPE_UNIVERSE,
    }
}

/// Adds `addr/prefix` to interface `index` with the scope `ip addr add` gives it and `flags`
/// (`IFA_F_NODAD` for an IPv6 address usable at once). True when added, false when the
/// interface already had it (`EEXIST`: same address and prefix).
pub fn add_address(index: u32, addr: IpAddr, prefix: u8, flags: u32) -> Result<bool, NetlinkError> {
    // The 8-bit header field holds the old flags; IFA_FLAGS all 32.
    let mut m = address_message(
        index,
        addr,
        prefix,
        (flags & 0xff) as u8,
        default_scope(addr),
    );
    if flags > 0xff {
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
                flags,
            )));
    }
    let request = encode(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    match self::request(&request, "add address") {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `addr/prefix` from interface `index`. True when deleted, false when it was not
/// there (`EADDRNOTAVAIL`).
pub fn delete_address(index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
    let m = address_message(index, addr, prefix, 0, RT_SCOPE_UNIVERSE);
    let request = encode(
        RouteNetlinkMessage::DelAddress(m),
        NLM_F_REQUEST | NLM_F_ACK,
    );
    match self::request(&request, "delete address") {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl From<IpAddr> for Family {
    fn from(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl From<Family> for AddressFamily {
    fn from(family: Family) -> AddressFamily {
        match family {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }
}

/// The addresses of `family` on interface `index` (`RTM_GETADDR` dump).
pub fn addresses(index: u32, family: Family) -> Result<Vec<Address>, NetlinkError> {
    for _ in 0..DUMP_TRIES {
        // The kernel filters by family; by index only in strict mode, so that is done here.
        let mut m = AddressMessage::default();
        m.header.family = family.into();
        let request = encode(
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_REQUEST | NLM_F_DUMP,
        );
        let mut out = Vec::new();
        let interrupted = dump(&request, &mut |kind, body| {
            if kind == RTM_NEWADDR {
                if let Some(a) = parse_address(body) {
                    if a.index == index {
                        out.push(a);
                    }
                }
            }
        })?;
        if !interrupted {
            return Ok(out);
        }
    }
    Err(NetlinkError::Io(io::Error::other(format!(
        "the address dump was interrupted by changes {DUMP_TRIES} times"
    ))))
}

/// True when interface `index` has `addr` (with any prefix).
pub fn has_address(index: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
    Ok(addresses(index, addr.into())?
        .iter()
        .any(|a| a.addr == addr))
}

/// `struct ifaddrmsg` for `addr/prefix` on `index`, with `IFA_LOCAL` and `IFA_ADDRESS` both
/// the address, as `ip addr add` sends them for an address with no peer.
fn address_message(index: u32, addr: IpAddr, prefix: u8, flags: u8, scope: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header = AddressHeader {
        family: Family::from(addr).into(),
        prefix_len: prefix,
        flags: AddressHeaderFlags::from_bits_retain(flags),
        scope: scope.into(),
        index,
    };
    m.attributes = vec![
        AddressAttribute::Local(addr),
        AddressAttribute::Address(addr),
    ];
    m
}

/// Request `message` as bytes, with the netlink header's `flags` and a fresh sequence
/// number (returned too: the answers carry it).
fn encode(message: RouteNetlinkMessage, flags: u16) -> (Vec<u8>, u32) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq; // the port number stays 0: the kernel's
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    (buf, seq)
}

/// An `RTM_NEWADDR` message's body (after the netlink header).
fn parse_address(body: &[u8]) -> Option<Address> {
    let m = AddressMessage::parse(body).ok()?;
    let (mut local, mut address) = (None, None);
    let mut flags = u32::from(m.header.flags.bits());
    for attr in &m.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    Some(Address {
        index: m.header.index,
        // IFA_LOCAL is the local address where there is a peer (IFA_ADDRESS then); IPv6
        // sends only IFA_ADDRESS otherwise.
        addr: local.or(address)?,
        prefix: m.header.prefix_len,
        scope: m.header.scope.into(),
        flags,
    })
}

/// A `NETLINK_ROUTE` socket of the calling thread's network namespace, with extended
/// acknowledgements and a bounded wait for answers.
fn open() -> io::Result<Socket> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    // Best effort: without them an error is the errno only, and echoes the whole request.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    socket2::SockRef::from(&socket).set_read_timeout(Some(ANSWER_WITHIN))?;
    Ok(socket)
}

fn send(socket: &Socket, msg: &[u8]) -> io::Result<()> {
    let sent = socket.send_to(msg, &SocketAddr::new(0, 0), 0)?;
    if sent != msg.len() {
        return Err(io::Error::other("netlink request sent in part"));
    }
    Ok(())
}

/// Reads the answers to request `seq`, handing each message (type, flags, body) to `each`
/// until it says stop.
fn receive(
    socket: &Socket,
    seq: u32,
    each: &mut dyn FnMut(u16, u16, &[u8]) -> bool,
) -> io::Result<()> {
    // The kernel sizes a dump's parts to the reader's buffer, up to 32 KiB.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // MSG_TRUNC: the datagram's whole length, to tell a truncated one.
        let n = match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no netlink answer within {ANSWER_WITHIN:?}"),
                ));
            }
            Err(e) => return Err(e),
        };
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "netlink answer of {n} bytes truncated"
            )));
        }
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let message = NetlinkBuffer::new_checked(&buf[at..n])
                .map_err(|e| io::Error::other(format!("malformed netlink answer: {e}")))?;
            at += align(message.length() as usize);
            if message.sequence_number() != seq {
                continue;
            }
            if !each(message.message_type(), message.flags(), message.payload()) {
                return Ok(());
            }
        }
    }
}

/// `NLMSG_ERROR`'s body as a result: 0 is the acknowledgement, otherwise the negated errno,
/// with the kernel's extended message when there is one.
fn error_of(flags: u16, body: &[u8], op: &'static str) -> Result<(), NetlinkError> {
    let Ok(error) = ErrorBuffer::new_checked(body) else {
        return Err(NetlinkError::Kernel {
            op,
            errno: libc::EPROTO,
            message: None,
        });
    };
    let Some(code) = error.code() else {
        return Ok(());
    };
    // After the errno, the echoed request: its header only when capped, else all of it.
    let echoed = error.payload();
    let echoed_len = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        NetlinkBuffer::new_checked(echoed).map_or(NLMSG_HDRLEN, |m| m.length() as usize)
    };
    let message = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| echoed.get(align(echoed_len)..))
        .flatten()
        .and_then(extended_message);
    Err(NetlinkError::Kernel {
        op,
        errno: -code.get(),
        message,
    })
}

/// `NLMSGERR_ATTR_MSG` among an extended acknowledgement's attributes, when not empty.
fn extended_message(attrs: &[u8]) -> Option<String> {
    let attr = NlasIterator::new(attrs)
        .map_while(Result::ok)
        .find(|a| a.kind() == NLMSGERR_ATTR_MSG)?;
    let text = attr.value();
    let text = text.split(|b| *b == 0).next().unwrap_or(text);
    (!text.is_empty()).then(|| String::from_utf8_lossy(text).into_owned())
}

/// `NLMSG_ALIGN`: messages and attributes start at 4-byte boundaries.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Sends request `msg` (with `NLM_F_ACK`) and waits for its acknowledgement.
fn request((msg, seq): &(Vec<u8>, u32), op: &'static str) -> Result<(), NetlinkError> {
    let socket = open()?;
    send(&socket, msg)?;
    let mut result = Ok(());
    receive(&socket, *seq, &mut |kind, flags, body| {
        if kind == NLMSG_ERROR {
            result = error_of(flags, body, op);
            return false;
        }
        true
    })?;
    result
}

/// Sends dump request `msg` and hands every message of the answer (type, body) to `each`.
/// True when the kernel says the dump was interrupted (ask again).
fn dump(
    (msg, seq): &(Vec<u8>, u32),
    each: &mut dyn FnMut(u16, &[u8]),
) -> Result<bool, NetlinkError> {
    let socket = open()?;
    send(&socket, msg)?;
    let mut interrupted = false;
    let mut result = Ok(());
    receive(&socket, *seq, &mut |kind, flags, body| {
        interrupted |= flags & NLM_F_DUMP_INTR != 0;
        match kind {
            // Its body, when there is one, is the dump's own result (0 or -errno), with the
            // extended acknowledgement's attributes after it.
            NLMSG_DONE => {
                if let Ok(done) = DoneBuffer::new_checked(body) {
                    if done.code() != 0 {
                        result = Err(NetlinkError::Kernel {
                            op: "dump",
                            errno: -done.code(),
                            message: (flags & NLM_F_ACK_TLVS != 0)
                                .then(|| extended_message(done.extended_ack()))
                                .flatten(),
                        });
                    }
                }
                false
            }
            NLMSG_ERROR => {
                result = error_of(flags, body, "dump");
                false
            }
            _ => {
                each(kind, body);
                // A lone answer without NLM_F_MULTI ends the dump.
                flags & NLM_F_MULTIPART != 0
            }
        }
    })?;
    result.map(|()| interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTM_NEWLINK: u16 = 16;

    /// Runs `f` on a thread of its own in a network namespace of its own with `lo` up; the
    /// namespace (and every address in it) goes with the thread, also when `f` panics. None,
    /// with a note, when not root.
    pub(crate) fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (a network namespace of its own)");
            return None;
        }
        let joined = std::thread::spawn(move || {
            // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread into a new network
            // namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            set_up(interface_index("lo").expect("lo"));
            f()
        })
        .join();
        Some(joined.unwrap_or_else(|p| std::panic::resume_unwind(p)))
    }

    /// `ip link set up` by netlink: `RTM_NEWLINK` with `IFF_UP` in flags and change.
    fn set_up(index: u32) {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, pad, type
        m.buf.extend_from_slice(&index.to_ne_bytes());
        let up = libc::IFF_UP as u32;
        m.buf.extend_from_slice(&up.to_ne_bytes()); // flags
        m.buf.extend_from_slice(&up.to_ne_bytes()); // change
        request(&m.finish(), "set link up").expect("link up");
    }

    #[test]
    fn addresses_are_added_listed_and_deleted_once_each_v4_and_v6() {
        in_netns(|| {
            let lo = interface_index("lo").unwrap();
            for (text, prefix, flags) in
                [("198.18.0.1", 32, 0), ("fd00:198:18::1", 128, IFA_F_NODAD)]
            {
                let addr: IpAddr = text.parse().unwrap();
                assert!(!has_address(lo, addr).unwrap(), "{addr} before");
                assert!(
                    add_address(lo, addr, prefix, flags).unwrap(),
                    "{addr} added"
                );
                assert!(
                    !add_address(lo, addr, prefix, flags).unwrap(),
                    "{addr} again: EEXIST, already there"
                );
                let listed: Vec<Address> = addresses(lo, addr.into())
                    .unwrap()
                    .into_iter()
                    .filter(|a| a.addr == addr)
                    .collect();
                assert_eq!(listed.len(), 1, "{listed:?}");
                let a = listed[0];
                assert_eq!((a.index, a.prefix), (lo, prefix), "{a:?}");
                assert_eq!(
                    a.scope, RT_SCOPE_UNIVERSE,
                    "global, as `ip addr add` gives: {a:?}"
                );
                if addr.is_ipv6() {
                    assert_ne!(a.flags & IFA_F_NODAD, 0, "{a:?}");
                    assert_eq!(
                        a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED),
                        0,
                        "usable at once: {a:?}"
                    );
                }
                assert!(has_address(lo, addr).unwrap());
                assert!(delete_address(lo, addr, prefix).unwrap(), "{addr} deleted");
                assert!(
                    !delete_address(lo, addr, prefix).unwrap(),
                    "{addr} again: EADDRNOTAVAIL, already gone"
                );
                assert!(!has_address(lo, addr).unwrap(), "{addr} after");
            }
            // The other addresses of lo are listed and left alone.
            let v4 = addresses(lo, Family::V4).unwrap();
            assert!(
                v4.iter().any(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)
                    && a.prefix == 8
                    && a.scope == RT_SCOPE_HOST),
                "{v4:?}"
            );
        });
    }

    #[test]
    fn a_dump_that_comes_in_several_parts_lists_every_address() {
        in_netns(|| {
            let lo = interface_index("lo").unwrap();
            // 1,000 IPv4 addresses are some 80 KiB of answer, in parts of at most 32 KiB.
            let all: Vec<IpAddr> = (0..1000u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + 0x100 + i)))
                .collect();
            for a in &all {
                assert!(add_address(lo, *a, 32, 0).unwrap());
            }
            let listed = addresses(lo, Family::V4).unwrap();
            for a in &all {
                assert!(listed.iter().any(|l| l.addr == *a), "{a} not listed");
            }
            assert_eq!(listed.len(), all.len() + 1, "and 127.0.0.1");
            for a in &all {
                assert!(delete_address(lo, *a, 32).unwrap());
            }
            assert_eq!(addresses(lo, Family::V4).unwrap().len(), 1);
        });
    }

    #[test]
    fn a_refusal_names_the_errno_and_a_missing_interface_its_name() {
        in_netns(|| {
            let addr: IpAddr = "198.18.0.2".parse().unwrap();
            let e = add_address(0x7fff_fff0, addr, 32, 0).unwrap_err();
            assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
            assert!(e.to_string().starts_with("add address: "), "{e}");
            // The kernel says why in words too (extended acknowledgement).
            let lo = interface_index("lo").unwrap();
            let e = add_address(lo, addr, 33, 0).unwrap_err();
            assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
            assert!(
                matches!(&e, NetlinkError::Kernel { message: Some(m), .. } if m.contains("prefix")),
                "{e:?}"
            );
            let e = interface_index("gw-none0").unwrap_err();
            assert!(matches!(e, NetlinkError::Interface { .. }), "{e}");
            assert!(e.to_string().contains("gw-none0"), "{e}");
        });
    }

    #[test]
    fn the_vip_functions_add_once_and_remove_what_is_there() {
        use crate::service::vip;
        in_netns(|| {
            for text in ["198.18.0.3", "fd00:198:18::3"] {
                let addr: IpAddr = text.parse().unwrap();
                assert!(!vip::present(addr, "lo"));
                vip::assign(addr, "lo").unwrap();
                vip::assign(addr, "lo").unwrap();
                assert!(vip::present(addr, "lo"));
                vip::add(addr, "lo").unwrap();
                vip::remove(addr, "lo").unwrap();
                assert!(!vip::present(addr, "lo"));
                vip::remove(addr, "lo").unwrap();
                assert!(vip::add(addr, "gw-none0").is_err(), "no such interface");
                assert!(!vip::present(addr, "gw-none0"));
            }
            // The announcement does not wait for its packet socket's close (an RCU grace
            // period in the kernel).
            let addr: IpAddr = "198.18.0.3".parse().unwrap();
            vip::assign(addr, "lo").unwrap();
            let t = std::time::Instant::now();
            vip::announce(addr, "lo").unwrap();
            eprintln!("gratuitous ARP on lo: {} us", t.elapsed().as_micros());
            vip::remove(addr, "lo").unwrap();
            // Timing, for the record: a netlink add and delete against an `ip` run's ~10 ms.
            let addr: IpAddr = "198.18.0.4".parse().unwrap();
            let n = 200;
            let t = std::time::Instant::now();
            for _ in 0..n {
                vip::assign(addr, "lo").unwrap();
                vip::remove(addr, "lo").unwrap();
            }
            eprintln!(
                "vip assign + remove by netlink: {:.0} us a pair ({n} pairs)",
                t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
            );
        });
    }

    #[test]
    fn an_extended_acknowledgement_gives_its_message_and_a_plain_one_the_errno() {
        // nlmsgerr: error, then the echoed header (capped), then NLMSGERR_ATTR_MSG.
        let mut body = (-libc::EINVAL).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"Invalid prefix for given prefix length.\0";
        body.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(text);
        body.resize(align(body.len()), 0);
        let e = error_of(NLM_F_CAPPED | NLM_F_ACK_TLVS, &body, "add address").unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(
            e.to_string()
                .ends_with("(Invalid prefix for given prefix length.)"),
            "{e}"
        );
        let e = error_of(NLM_F_CAPPED, &body, "add address").unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(!e.to_string().contains("prefix length"), "{e}");
        let ack = 0i32.to_ne_bytes();
        assert!(error_of(NLM_F_CAPPED, &ack, "add address").is_ok());
    }

    #[test]
    fn a_listed_address_is_parsed_from_its_message() {
        let mut m = Message::new(RTM_NEWADDR, 0);
        let addr: IpAddr = "fd00:198:18::5".parse().unwrap();
        m.ifaddrmsg(addr, 128, 0x80, RT_SCOPE_UNIVERSE, 7);
        m.attr(IFA_ADDRESS, &octets(&addr));
        m.attr(IFA_FLAGS, &(0x80 | IFA_F_NODAD).to_ne_bytes());
        let (bytes, _) = m.finish();
        let a = parse_address(&bytes[NLMSG_HDRLEN..]).unwrap();
        assert_eq!(
            a,
            Address {
                index: 7,
                addr,
                prefix: 128,
                scope: RT_SCOPE_UNIVERSE,
                flags: 0x80 | IFA_F_NODAD,
            }
        );
        assert_eq!(default_scope("127.0.0.53".parse().unwrap()), RT_SCOPE_HOST);
        assert_eq!(
            default_scope("198.18.0.1".parse().unwrap()),
            RT_SCOPE_UNIVERSE
        );
    }
}

/// The cut-over's hand-off path (add the address, see it there, delete it), timed for this
/// implementation and the hand-written one it replaced, side by side in one run:
/// `cargo test -p godwit-runtime --release --lib service::netlink::timing -- --ignored --nocapture`
/// (root; `GODWIT_NETLINK_CYCLES` cycles, 1,000 by default, on a veth pair in a network
/// namespace of the test's own).
#[cfg(test)]
mod timing {
    use super::*;
    use std::time::{Duration, Instant};

    type Add = fn(u32, IpAddr, u8, u32) -> Result<bool, NetlinkError>;
    type Has = fn(u32, IpAddr) -> Result<bool, NetlinkError>;
    type Delete = fn(u32, IpAddr, u8) -> Result<bool, NetlinkError>;

    struct Client {
        name: &'static str,
        add: Add,
        has: Has,
        delete: Delete,
        times: [Vec<Duration>; 3],
    }

    fn ip(args: &str) {
        let out = std::process::Command::new("ip")
            .args(args.split(' '))
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args}: {out:?}");
    }

    /// Mean, median and 99th percentile in microseconds.
    fn summary(times: &mut [Duration]) -> String {
        times.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mean = times.iter().map(|d| us(*d)).sum::<f64>() / times.len() as f64;
        let at = |q: f64| us(times[((times.len() - 1) as f64 * q) as usize]);
        format!("{mean:7.1} {:7.1} {:7.1}", at(0.5), at(0.99))
    }

    #[test]
    #[ignore = "timing; needs root and iproute2 (run with --ignored --nocapture)"]
    fn add_check_delete_cycles_before_and_after_the_crates() {
        let cycles: usize = std::env::var("GODWIT_NETLINK_CYCLES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        super::tests::in_netns(move || {
            ip("link add gw-t0 type veth peer name gw-t1");
            ip("link set gw-t0 up");
            ip("link set gw-t1 up");
            let index = interface_index("gw-t0").unwrap();
            let mut clients = [
                Client {
                    name: "hand-written",
                    add: handwritten::add_address,
                    has: handwritten::has_address,
                    delete: handwritten::delete_address,
                    times: Default::default(),
                },
                Client {
                    name: "rust-netlink",
                    add: add_address,
                    has: has_address,
                    delete: delete_address,
                    times: Default::default(),
                },
            ];
            // Rounds of 100 cycles, each client in turn and the order swapped every round,
            // so neither gets the warmer caches or the quieter moment.
            let rounds = cycles.div_ceil(100);
            for round in 0..rounds {
                for k in 0..2 {
                    let c = &mut clients[(round + k) % 2];
                    for i in 0..100.min(cycles - round * 100) {
                        let addr = IpAddr::V4(Ipv4Addr::from(0xc612_0100 + i as u32));
                        let t = Instant::now();
                        assert!((c.add)(index, addr, 32, 0).unwrap(), "{addr} added");
                        let t1 = Instant::now();
                        assert!((c.has)(index, addr).unwrap(), "{addr} there");
                        let t2 = Instant::now();
                        assert!((c.delete)(index, addr, 32).unwrap(), "{addr} deleted");
                        let t3 = Instant::now();
                        c.times[0].push(t1 - t);
                        c.times[1].push(t2 - t1);
                        c.times[2].push(t3 - t2);
                    }
                }
            }
            eprintln!(
                "{cycles} add + has + delete cycles of a 198.18.1.x/32 on a veth, us per call"
            );
            eprintln!(
                "{:14} {:>23} {:>23} {:>23} {:>8}",
                "", "add (mean p50 p99)", "has (mean p50 p99)", "delete (mean p50 p99)", "cycle"
            );
            for c in &mut clients {
                let cycle = c.times.iter().flatten().sum::<Duration>().as_secs_f64() * 1e6
                    / c.times[0].len() as f64;
                let [add, has, delete] = &mut c.times;
                eprintln!(
                    "{:14} {} {} {} {cycle:8.1}",
                    c.name,
                    summary(add),
                    summary(has),
                    summary(delete)
                );
            }
        });
    }
}
