//! Who may act through the API, and who may read it.
//!
//! - On the Unix socket the kernel names the caller (`SO_PEERCRED`, `SO_PEERGROUPS`): root and
//!   the members of `[api] group` may act; anyone else who can open the socket may read, and a
//!   change they ask for is refused (403) and logged with their uid, gid and pid, at most
//!   [`REFUSALS_PER_SECOND`] lines a second and then a count of the lines left out.
//! - Over TCP nobody is known, so nothing is changed: the TCP router has no route that acts,
//!   and [`tcp_guard`] answers any method but GET and HEAD with 403. It also refuses a `Host`
//!   that is not this agent's (421), so that a web page cannot reach it through DNS rebinding.
//!
//! An act handler takes an [`Actor`], which only [`authorize`] makes: a route that acts cannot
//! be served without the check.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Json;
use tokio::net::{UnixListener, UnixStream};

/// Refusals logged per second at most; the rest are counted and the count logged.
pub const REFUSALS_PER_SECOND: u32 = 10;

/// A caller on the API socket, as the kernel saw it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its user id; `u32::MAX` (no user) when the kernel could not say.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Caller {
    /// The peer of a connected socket. A peer the kernel cannot name is no user at all, so it
    /// may not act.
    pub fn of(stream: &UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(cred) => Caller {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
                groups: peer_groups(stream.as_raw_fd()).unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "cannot read the API caller's groups");
                    Vec::new()
                }),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API caller's credentials");
                Caller {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    pid: None,
                    groups: Vec::new(),
                }
            }
        }
    }

    /// `uid=U gid=G pid=P`, as audit lines and the migration audit name a caller.
    pub fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("uid={} gid={} pid={pid}", self.uid, self.gid),
            None => format!("uid={} gid={}", self.uid, self.gid),
        }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Caller::of(stream.io())
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): not exported by every libc release.
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of a Unix socket's peer, as they were when it connected.
fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: `groups` holds `len` writable bytes, and the kernel writes at most `len`
        // bytes of gid_t values into it (or sets `len` to the size it needs and fails with
        // ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / GID;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // NGROUPS_MAX is 65536: a larger answer is not a group list.
        if e.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(e);
    }
}

/// The gid of `name`, or `None` when no such group exists.
pub fn group_id(name: &str) -> std::io::Result<Option<u32>> {
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in group name"))?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: an all-zero `group` is a valid value to be overwritten.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `buf` has
        // `buf.len()` bytes, and `group` and `found` are writable.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            // Some NSS modules answer an unknown name with an error rather than no entry.
            libc::ENOENT | libc::ESRCH => return Ok(None),
            e => return Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// Who may act through the socket: root, and the members of one group.
#[derive(Clone)]
pub struct Access {
    group: String,
    gid: Option<u32>,
    refusals: Arc<RefusalLog>,
}

impl Access {
    /// Root and the members of `group`, whose id is `gid` (`None`: no such group, so root only).
    pub fn new(group: &str, gid: Option<u32>) -> Access {
        Access {
            group: group.to_string(),
            gid,
            refusals: Arc::new(RefusalLog::new(REFUSALS_PER_SECOND)),
        }
    }

    /// Whether `caller` may act.
    pub fn allows(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || self
                .gid
                .is_some_and(|g| caller.gid == g || caller.groups.contains(&g))
    }

    /// Logs how many refusals were left out of the log, if any were.
    pub fn flush_refusals(&self) {
        self.refusals.flush(Instant::now());
    }

    fn refuse(&self, caller: &Caller, method: &Method, path: &str) -> Response {
        if let Some(left_out) = self.refusals.admit(Instant::now()) {
            if left_out > 0 {
                tracing::warn!(left_out, "API refusals left out of the log");
            }
            tracing::warn!(
                uid = caller.uid,
                gid = caller.gid,
                pid = caller.pid,
                method = %method,
                path,
                group = %self.group,
                "API change refused: the caller is neither root nor in the group"
            );
        }
        error(
            StatusCode::FORBIDDEN,
            format!(
                "{method} {path} changes this node: only root and the members of group {} may \
                 do it (you are uid {}, gid {})",
                self.group, caller.uid, caller.gid
            ),
        )
    }
}

/// The rate limit of refusal lines: at most `per_second` in each second, and the count of the
/// others when the next line is logged or at [`RefusalLog::flush`].
#[derive(Debug)]
struct RefusalLog {
    per_second: u32,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    fn new(per_second: u32) -> RefusalLog {
        RefusalLog {
            per_second,
            window: Mutex::new(Window {
                start: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// `Some(left out before this one)` when this refusal may be logged, `None` when it is to
    /// be counted only.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < self.per_second {
            w.logged += 1;
            Some(std::mem::take(&mut w.left_out))
        } else {
            w.left_out += 1;
            None
        }
    }

    /// Logs the count left out, once its window has ended.
    fn flush(&self, now: Instant) {
        let left_out = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.left_out == 0
                || w.start
                    .is_some_and(|s| now.duration_since(s) < Duration::from_secs(1))
            {
                return;
            }
            std::mem::take(&mut w.left_out)
        };
        tracing::warn!(left_out, "API refusals left out of the log");
    }
}

/// Proof that the caller may act: made only by [`authorize`], taken by every handler that
/// changes something.
#[derive(Debug, Clone)]
pub struct Actor(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Actor, Response> {
        parts.extensions.get::<Actor>().cloned().ok_or_else(|| {
            error(
                StatusCode::FORBIDDEN,
                "this route changes the node and is served only on the agent's Unix socket",
            )
        })
    }
}

/// The layer of the socket's act routes: lets root and the group through as an [`Actor`],
/// refuses and logs everyone else.
pub async fn authorize(
    State(access): State<Access>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    mut request: Request,
    next: Next,
) -> Response {
    if !access.allows(&caller) {
        let path = request.uri().path().to_string();
        return access.refuse(&caller, request.method(), &path);
    }
    request.extensions_mut().insert(Actor(caller));
    next.run(request).await
}

/// What the TCP listener accepts: reads, under this agent's own names.
#[derive(Debug, Clone)]
pub struct TcpPolicy {
    /// The listen address (its IP is one of the agent's names).
    pub listen: SocketAddr,
    /// Host names from `[api] allowed_hosts`, lowercase.
    pub allowed_hosts: Vec<String>,
    /// Where changes are served, for the refusal's message.
    pub socket: PathBuf,
    /// Who may make them, for the refusal's message.
    pub group: String,
}

impl TcpPolicy {
    /// Whether a request with this `Host` header is meant for this agent: `localhost`, a
    /// loopback address, the listen address (any address when listening on all of them, as
    /// an address cannot be rebound to another name), or a configured name; with or without
    /// a port.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" {
            return true;
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            let listen = self.listen.ip();
            if ip.is_loopback() || ip == listen || listen.is_unspecified() {
                return true;
            }
        }
        self.allowed_hosts.iter().any(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case(&name)
        })
    }
}

/// The host part of a `Host` header: a name, an IPv4 address, or an IPv6 address without its
/// brackets; `None` when it is none of these.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || is_port(after.strip_prefix(':')?)).then_some(ip);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty() && !name.contains(':')).then_some(name)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The layer of the TCP listener: a foreign `Host` gets 421, any method but GET and HEAD 403.
/// A request without `Host` (HTTP/1.0) is no browser's and passes.
pub async fn tcp_guard(
    State(policy): State<Arc<TcpPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(host) = request.headers().get(header::HOST) {
        let ok = host.to_str().is_ok_and(|h| policy.host_allowed(h));
        if !ok {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "host {:?} is not this agent's: it answers to localhost, loopback \
                     addresses, {} and [api] allowed_hosts",
                    String::from_utf8_lossy(host.as_bytes()),
                    policy.listen.ip()
                ),
            );
        }
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "this address serves reads only (GET); changes are served on the agent's Unix \
                 socket {}: use the `godwit` command as root or as a member of group {}",
                policy.socket.display(),
                policy.group
            ),
        );
    }
    next.run(request).await
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(serde_json::json!({ "error": msg.to_string() }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_the_group_act_everyone_else_does_not() {
        let access = Access::new("godwit", Some(990));
        let cases = [
            (caller(0, 0, &[]), true),
            (caller(0, 1000, &[1000]), true),
            (caller(1000, 990, &[]), true),
            (caller(1000, 1000, &[27, 990]), true),
            (caller(1000, 1000, &[1000, 27]), false),
            (caller(65534, 65534, &[]), false),
            (caller(u32::MAX, u32::MAX, &[]), false),
        ];
        for (c, allowed) in cases {
            assert_eq!(access.allows(&c), allowed, "{c:?}");
        }
        let root_only = Access::new("godwit", None);
        assert!(root_only.allows(&caller(0, 0, &[])));
        assert!(!root_only.allows(&caller(1000, 990, &[990])));
    }

    #[test]
    fn refusal_lines_are_limited_per_second_and_the_rest_counted() {
        let log = RefusalLog::new(3);
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..10).map(|_| log.admit(t0)).collect();
        assert_eq!(
            admitted,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        // The next second's first line carries the count left out.
        assert_eq!(log.admit(t0 + Duration::from_millis(1000)), Some(7));
        assert_eq!(log.admit(t0 + Duration::from_millis(1001)), Some(0));
        for _ in 0..5 {
            log.admit(t0 + Duration::from_millis(1002));
        }
        // A flush within the window keeps the count; after it, takes it.
        log.flush(t0 + Duration::from_millis(1500));
        assert_eq!(log.window.lock().unwrap().left_out, 4);
        log.flush(t0 + Duration::from_millis(2000));
        assert_eq!(log.window.lock().unwrap().left_out, 0);
    }

    #[test]
    fn only_this_agents_names_pass_the_host_check() {
        let policy = |listen: &str, hosts: &[&str]| TcpPolicy {
            listen: listen.parse().unwrap(),
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            socket: PathBuf::from("/run/godwit/api.sock"),
            group: "godwit".into(),
        };
        let local = policy("127.0.0.1:9746", &["edge-01"]);
        for ok in [
            "localhost",
            "localhost:9746",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:9746",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9746",
            "edge-01",
            "Edge-01:9746",
        ] {
            assert!(local.host_allowed(ok), "{ok} is allowed");
        }
        for refused in [
            "evil.example",
            "evil.example:9746",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "198.18.0.1",
            "[::1",
            "::1",
            "[::1]x",
            "localhost:http",
            "",
            ":9746",
            "edge-02",
        ] {
            assert!(!local.host_allowed(refused), "{refused} is refused");
        }
        let public = policy("198.18.0.1:9746", &[]);
        assert!(public.host_allowed("198.18.0.1:9746"));
        assert!(!public.host_allowed("198.18.0.2:9746"));
        assert!(!public.host_allowed("edge-01"));
        let any = policy("0.0.0.0:9746", &["[fd00::7]"]);
        assert!(any.host_allowed("203.0.113.9:9746"));
        assert!(any.host_allowed("[fd00::7]:9746"));
        assert!(!any.host_allowed("evil.example"));
    }
}
