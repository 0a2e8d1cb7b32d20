//! The hand-written rtnetlink client that `netlink.rs` replaced, kept for tests only: its
//! byte-level [`Message`] builder gives the unit tests requests and answers built
//! independently of the crates that now encode and decode them, and its request functions
//! are the baseline of the timing test (`netlink::timing`). Not compiled outside tests.
//!
//! It builds and parses the messages as bytes in native byte order and makes the socket
//! calls with `libc` itself.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{default_scope, Address, Family, NetlinkError};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// On an error message: the request is echoed as its header only (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// On an error message: attributes follow the echoed request (`NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = 0x200;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;
// linux/rtnetlink.h
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_HOST: u8 = 254;
// linux/if_addr.h
const IFADDRMSG_LEN: usize = 8;
pub(super) const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
pub(super) const IFA_FLAGS: u16 = 8;

/// How long a call waits for the kernel's answer (it answers at once; this only bounds a
/// kernel that does not).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// A dump the kernel reports as interrupted (the addresses changed while it ran) is asked
/// again this many times.
const DUMP_TRIES: usize = 3;

/// Sequence numbers of this process's requests (a reply is matched to its request).
static SEQ: AtomicU32 = AtomicU32::new(1);

/// Adds `addr/prefix` to interface `index` with the scope `ip addr add` gives it and `flags`
/// (`IFA_F_NODAD` for an IPv6 address usable at once). True when added, false when the
/// interface already had it (`EEXIST`: same address and prefix).
pub(super) fn add_address(
    index: u32,
    addr: IpAddr,
    prefix: u8,
    flags: u32,
) -> Result<bool, NetlinkError> {
    let mut m = Message::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    );
    // The 8-bit header field holds the old flags; IFA_FLAGS all 32.
    m.ifaddrmsg(
        addr,
        prefix,
        (flags & 0xff) as u8,
        default_scope(addr),
        index,
    );
    m.address_attrs(addr);
    if flags > 0xff {
        m.attr(IFA_FLAGS, &flags.to_ne_bytes());
    }
    match request(&m.finish(), "add address") {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `addr/prefix` from interface `index`. True when deleted, false when it was not
/// there (`EADDRNOTAVAIL`).
pub(super) fn delete_address(index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
    let mut m = Message::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK);
    m.ifaddrmsg(addr, prefix, 0, 0, index);
    m.address_attrs(addr);
    match request(&m.finish(), "delete address") {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The addresses of `family` on interface `index` (`RTM_GETADDR` dump).
pub(super) fn addresses(index: u32, family: Family) -> Result<Vec<Address>, NetlinkError> {
    let af = af(family);
    for _ in 0..DUMP_TRIES {
        let mut m = Message::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
        // The kernel filters by family; by index only in strict mode, so that is done here.
        m.buf.extend_from_slice(&[af, 0, 0, 0]);
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        let interrupted = dump(&m.finish(), &mut |kind, body| {
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
pub(super) fn has_address(index: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
    Ok(addresses(index, addr.into())?
        .iter()
        .any(|a| a.addr == addr))
}

fn af(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

pub(super) fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A request being built: the netlink header (length filled in by `finish`), the family
/// header, attributes.
pub(super) struct Message {
    pub(super) buf: Vec<u8>,
    seq: u32,
}

impl Message {
    pub(super) fn new(kind: u16, flags: u16) -> Message {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel's
        Message { buf, seq }
    }

    /// `struct ifaddrmsg`.
    pub(super) fn ifaddrmsg(&mut self, addr: IpAddr, prefix: u8, flags: u8, scope: u8, index: u32) {
        self.buf
            .extend_from_slice(&[af(Family::from(addr)), prefix, flags, scope]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
    }

    /// `IFA_LOCAL` and `IFA_ADDRESS` both the address, as `ip addr add` sends them for an
    /// address with no peer.
    fn address_attrs(&mut self, addr: IpAddr) {
        let o = octets(&addr);
        self.attr(IFA_LOCAL, &o);
        self.attr(IFA_ADDRESS, &o);
    }

    /// One attribute (`struct rtattr`), padded to 4 bytes.
    pub(super) fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
    }

    pub(super) fn finish(mut self) -> (Vec<u8>, u32) {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        (self.buf, self.seq)
    }
}

pub(super) fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b`: (type, payload); stops at the first malformed one.
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let kind = u16_at(b, at + 2)?;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let data = &b[at + 4..at + len];
        at += align(len);
        Some((kind, data))
    })
}

/// An `RTM_NEWADDR` message's body (after the netlink header).
fn parse_address(body: &[u8]) -> Option<Address> {
    let family = *body.first()?;
    let prefix = *body.get(1)?;
    let flags8 = *body.get(2)?;
    let scope = *body.get(3)?;
    let index = u32_at(body, 4)?;
    let ip = |d: &[u8]| -> Option<IpAddr> {
        if family == af(Family::V4) && d.len() == 4 {
            Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)))
        } else if family == af(Family::V6) && d.len() == 16 {
            Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(d).ok()?)))
        } else {
            None
        }
    };
    let (mut local, mut address, mut flags) = (None, None, u32::from(flags8));
    for (kind, data) in attrs(body.get(IFADDRMSG_LEN..)?) {
        match kind {
            IFA_LOCAL => local = ip(data),
            IFA_ADDRESS => address = ip(data),
            IFA_FLAGS => flags = u32_at(data, 0).unwrap_or(flags),
            _ => {}
        }
    }
    Some(Address {
        index,
        // IFA_LOCAL is the local address where there is a peer (IFA_ADDRESS then); IPv6
        // sends only IFA_ADDRESS otherwise.
        addr: local.or(address)?,
        prefix,
        scope,
        flags,
    })
}

/// A `NETLINK_ROUTE` socket of the calling thread's network namespace, with extended
/// acknowledgements and a bounded wait for answers.
fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Best effort: without them an error is the errno only, and echoes the whole request.
    let _ = setsockopt(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, &1i32);
    let _ = setsockopt(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, &1i32);
    let within = libc::timeval {
        tv_sec: ANSWER_WITHIN.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &within)?;
    Ok(fd)
}

/// `setsockopt(2)` with a value of the option's type `T` (an `int`, a `timeval`).
fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: the pointer and size are those of a live `T`, which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zeroed is valid (pid 0: the kernel) and filled in.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto(2) with our buffer and a correctly sized sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != msg.len() {
        return Err(io::Error::other("netlink request sent in part"));
    }
    Ok(())
}

/// Reads the answers to request `seq`, handing each message (type, flags, body) to `each`
/// until it says stop.
fn receive(
    fd: &OwnedFd,
    seq: u32,
    each: &mut dyn FnMut(u16, u16, &[u8]) -> bool,
) -> io::Result<()> {
    // The kernel sizes a dump's parts to the reader's buffer, up to 32 KiB.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv(2) into our buffer, at most its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no netlink answer within {ANSWER_WITHIN:?}"),
                ));
            }
            return Err(e);
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "netlink answer of {n} bytes truncated"
            )));
        }
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let b = &buf[at..n];
            let len = u32_at(b, 0).unwrap_or(0) as usize;
            if len < NLMSG_HDRLEN || len > b.len() {
                return Err(io::Error::other("malformed netlink answer"));
            }
            let kind = u16_at(b, 4).unwrap_or(0);
            let flags = u16_at(b, 6).unwrap_or(0);
            let their_seq = u32_at(b, 8).unwrap_or(0);
            at += align(len);
            if their_seq != seq {
                continue;
            }
            if !each(kind, flags, &b[NLMSG_HDRLEN..len]) {
                return Ok(());
            }
        }
    }
}

/// `NLMSG_ERROR`'s body as a result: 0 is the acknowledgement, otherwise the negated errno,
/// with the kernel's extended message when there is one.
fn error_of(flags: u16, body: &[u8], op: &'static str) -> Result<(), NetlinkError> {
    let errno = u32_at(body, 0).map_or(-libc::EPROTO, |e| e as i32);
    if errno == 0 {
        return Ok(());
    }
    // The echoed request: its header only when capped, else all of it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        u32_at(body, 4).map_or(NLMSG_HDRLEN, |l| l as usize)
    };
    let message = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| body.get(4 + align(echoed)..))
        .flatten()
        .and_then(|tlvs| attrs(tlvs).find(|(k, _)| *k == NLMSGERR_ATTR_MSG))
        .map(|(_, d)| {
            String::from_utf8_lossy(d.split(|b| *b == 0).next().unwrap_or(d)).into_owned()
        })
        .filter(|m| !m.is_empty());
    Err(NetlinkError::Kernel {
        op,
        errno: -errno,
        message,
    })
}

/// Sends request `msg` (with `NLM_F_ACK`) and waits for its acknowledgement.
pub(super) fn request((msg, seq): &(Vec<u8>, u32), op: &'static str) -> Result<(), NetlinkError> {
    let fd = open()?;
    send(&fd, msg)?;
    let mut result = Ok(());
    receive(&fd, *seq, &mut |kind, flags, body| {
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
    let fd = open()?;
    send(&fd, msg)?;
    let mut interrupted = false;
    let mut result = Ok(());
    receive(&fd, *seq, &mut |kind, flags, body| {
        interrupted |= flags & NLM_F_DUMP_INTR != 0;
        match kind {
            // Its body, when there is one, is the dump's own result (0 or -errno).
            NLMSG_DONE => {
                if body.len() >= 4 {
                    result = error_of(0, body, "dump");
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
                flags & NLM_F_MULTI != 0
            }
        }
    })?;
    result.map(|()| interrupted)
}
