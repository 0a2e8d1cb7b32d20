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
//! The messages are built and parsed as bytes in native byte order (the netlink header, the
//! family header and 4-byte aligned attributes of `linux/netlink.h`, `linux/rtnetlink.h` and
//! `linux/if_addr.h`); the only `unsafe` is the socket calls.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// The address's flag for "no duplicate address detection" (IPv6).
pub const IFA_F_NODAD: u32 = 0x02;
/// Duplicate address detection found the address on another node (IPv6).
pub const IFA_F_DADFAILED: u32 = 0x08;
/// Not usable yet: duplicate address detection is running (IPv6).
pub const IFA_F_TENTATIVE: u32 = 0x40;

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
pub fn delete_address(index: u32, addr: IpAddr, prefix: u8) -> Result<bool, NetlinkError> {
    let mut m = Message::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK);
    m.ifaddrmsg(addr, prefix, 0, 0, index);
    m.address_attrs(addr);
    match request(&m.finish(), "delete address") {
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

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// The addresses of `family` on interface `index` (`RTM_GETADDR` dump).
pub fn addresses(index: u32, family: Family) -> Result<Vec<Address>, NetlinkError> {
    let af = family.af();
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
pub fn has_address(index: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
    Ok(addresses(index, addr.into())?
        .iter()
        .any(|a| a.addr == addr))
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A request being built: the netlink header (length filled in by `finish`), the family
/// header, attributes.
struct Message {
    buf: Vec<u8>,
    seq: u32,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Message {
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
    fn ifaddrmsg(&mut self, addr: IpAddr, prefix: u8, flags: u8, scope: u8, index: u32) {
        self.buf
            .extend_from_slice(&[Family::from(addr).af(), prefix, flags, scope]);
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
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn finish(mut self) -> (Vec<u8>, u32) {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        (self.buf, self.seq)
    }
}

fn align(n: usize) -> usize {
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
        if family == Family::V4.af() && d.len() == 4 {
            Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?)))
        } else if family == Family::V6.af() && d.len() == 16 {
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
fn request((msg, seq): &(Vec<u8>, u32), op: &'static str) -> Result<(), NetlinkError> {
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
