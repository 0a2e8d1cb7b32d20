//! Who a service's processes run as, and what they may do.
//!
//! A spec names a `user` (and optionally a `group`); without one the service runs as the
//! node's unprivileged service user (`[services] default_user`, created at the agent's start),
//! never as root unless the spec says `root`. Between fork and exec the child takes that
//! user's groups, gid and uid, drops every capability the spec does not list (bounding,
//! inheritable, permitted, effective and ambient sets; root too), sets `no_new_privs` and its
//! umask. A listed capability is kept, and raised as ambient for a user other than root, so it
//! survives the exec. Health-check commands get the same treatment.
//!
//! The files the agent writes for a service (its state directory, state arriving by a
//! migration) belong to that user; modes from peers and images are masked
//! ([`mask_mode`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A resolved user: the ids a service's processes take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name (or the numeric id as written, for a uid without an account).
    pub user: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database; the primary one included).
    pub groups: Vec<u32>,
}

impl Identity {
    /// Resolves `user` (a name or a numeric uid) and `group` (a name or a numeric gid; the
    /// user's primary group when absent) on this host; an error names what does not exist.
    /// A numeric uid without an account takes the gid of the same number and no other groups.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, String> {
        let (name, uid, primary) = match parse_id(user) {
            Some(uid) => match getpw(Key::Id(uid)).map_err(|e| format!("user {user:?}: {e}"))? {
                Some(p) => p,
                None => (user.to_string(), uid, uid),
            },
            None => getpw(Key::Name(user))
                .map_err(|e| format!("user {user:?}: {e}"))?
                .ok_or_else(|| format!("user {user:?} does not exist on this node"))?,
        };
        let gid = match group {
            None => primary,
            Some(g) => resolve_group(g)?,
        };
        let mut groups = if parse_id(&name).is_some() {
            Vec::new()
        } else {
            group_list(&name, gid)
        };
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Ok(Identity {
            user: name,
            uid,
            gid,
            groups,
        })
    }

    /// The identity this process runs as (an agent that is not root runs its services as
    /// itself: it cannot switch to anyone else).
    pub fn current() -> Identity {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let name = getpw(Key::Id(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |p| p.0);
        Identity {
            user: name,
            uid,
            gid,
            groups: vec![gid],
        }
    }

    /// The node's unprivileged service user `name`, created as a system user (no home, no
    /// login shell, a group of its own) when it does not exist yet.
    pub fn ensure_system_user(name: &str) -> Result<Identity, String> {
        if !valid_name(name) {
            return Err(format!("{name:?} is not a valid user name"));
        }
        let mut tries = 0;
        loop {
            if let Ok(id) = Identity::resolve(name, None) {
                return Ok(id);
            }
            match Identity::useradd(name) {
                Ok(id) => return Ok(id),
                // Another agent on this host may hold the passwd lock while it creates it.
                Err(_) if tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn useradd(name: &str) -> Result<Identity, String> {
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd to create user {name:?}: {e}"))?;
        // Another agent on this host may have created it meanwhile: the lookup decides.
        Identity::resolve(name, None).map_err(|e| {
            format!(
                "{e}; useradd failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }
}

/// What a service's processes may do besides being its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The user and groups.
    pub identity: Identity,
    /// The capabilities kept, one bit per capability number.
    pub caps: u64,
    /// The file mode creation mask.
    pub umask: u32,
}

impl Limits {
    /// Registers the switch to this user, the capability drop, `no_new_privs` and the umask
    /// as the command's last step before `exec`: after every hook registered so far (joining
    /// the cgroup, waiting while parked), which need the agent's privileges.
    ///
    /// An agent that is not root keeps its own ids (it cannot switch) and drops what
    /// capabilities it has.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        // SAFETY: geteuid cannot fail and touches no memory.
        let privileged = unsafe { libc::geteuid() } == 0;
        let (uid, gid, caps, umask) = (self.identity.uid, self.identity.gid, self.caps, self.umask);
        let groups: Vec<libc::gid_t> = self.identity.groups.clone();
        let last_cap = last_cap();
        // SAFETY: the closure runs in the child between fork and exec. It calls only
        // setgroups, setresgid, setresuid, prctl, the capset system call and umask, which are
        // async-signal-safe system calls, on values copied into the closure before the fork
        // (`groups` is read, never allocated or freed there).
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(io::Error::last_os_error());
                if privileged {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                    {
                        return fail();
                    }
                    // The bounding set needs CAP_SETPCAP: before the uid changes.
                    for cap in 0..=last_cap {
                        if caps & (1 << cap) == 0
                            && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                                != 0
                        {
                            return fail();
                        }
                    }
                    // Keep the permitted set across the uid change only for what is listed.
                    if caps != 0
                        && uid != 0
                        && libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) != 0
                    {
                        return fail();
                    }
                    if libc::setresuid(uid, uid, uid) != 0 {
                        return fail();
                    }
                }
                if capset(caps) != 0 {
                    return fail();
                }
                // Absent before Linux 4.3: nothing to clear then.
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // A user other than root keeps a capability across exec only as ambient.
                let uid_now = libc::getuid();
                if uid_now != 0 {
                    for cap in 0..=last_cap {
                        if caps & (1 << cap) != 0
                            && libc::prctl(
                                libc::PR_CAP_AMBIENT,
                                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                                cap as libc::c_ulong,
                                0,
                                0,
                            ) != 0
                        {
                            return fail();
                        }
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                    return fail();
                }
                libc::umask(umask as libc::mode_t);
                Ok(())
            });
        }
    }
}

/// The capabilities' names, by number (`CAP_` left off).
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of capability `name` (`CAP_NET_BIND_SERVICE` or `net_bind_service`).
pub fn capability(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPS.iter().position(|c| *c == bare).map(|i| i as u32)
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(CAPS.len() as u32 - 1)
        .min(63)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective, permitted and inheritable sets to `caps`. Async-signal-safe
/// (one system call on stack values).
fn capset(caps: u64) -> libc::c_long {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |w: u32| CapData {
        effective: w,
        permitted: w,
        inheritable: w,
    };
    let data = [word(caps as u32), word((caps >> 32) as u32)];
    // SAFETY: capset reads a version 3 header and two data words, both valid for the call.
    unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) }
}

/// Clears what a mode from a peer or an image must not carry: setuid, setgid and sticky
/// unless `allow_special`, and write access for others always.
pub fn mask_mode(mode: u32, allow_special: bool) -> u32 {
    let mut m = mode & 0o7777 & !0o002;
    if !allow_special {
        m &= 0o777;
    }
    m
}

/// Gives `dir` and everything below it to `uid`:`gid`, without following links (a link is
/// changed itself, never its target, and never descended). A regular file with more than one
/// link is left alone: its other name may lie outside `dir`. Setuid and setgid bits are kept
/// (the kernel clears them on a change of owner). Returns how many were left.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<u64> {
    let mut skipped = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_file() && meta.nlink() > 1 {
            skipped += 1;
            continue;
        }
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
            // The kernel clears setuid and setgid on a change of owner: put back what was
            // there (already masked, or kept on purpose).
            if !meta.is_symlink() && meta.mode() & 0o6000 != 0 {
                std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )?;
            }
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(skipped)
}

/// A user or group name as `useradd` accepts it: a lowercase letter or `_`, then up to 31 of
/// `a-z`, `0-9`, `_`, `-` (a final `$` allowed).
pub(crate) fn valid_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    !body.is_empty()
        && body.len() <= 32
        && body
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A group's gid: a name that exists on this host, or a numeric gid.
pub(crate) fn resolve_group(g: &str) -> Result<u32, String> {
    match parse_id(g) {
        Some(gid) => Ok(gid),
        None => getgr(g)
            .map_err(|e| format!("group {g:?}: {e}"))?
            .ok_or_else(|| format!("group {g:?} does not exist on this node")),
    }
}

/// A numeric id (not `-1`, which means "unchanged" to the kernel).
pub(crate) fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

enum Key<'a> {
    Name(&'a str),
    Id(u32),
}

/// A passwd entry: name, uid, gid.
fn getpw(key: Key<'_>) -> io::Result<Option<(String, u32, u32)>> {
    let name = match &key {
        Key::Name(n) => Some(CString::new(*n).map_err(|_| io::ErrorKind::InvalidInput)?),
        Key::Id(_) => None,
    };
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: a zeroed passwd is a valid out-parameter (pointers null, ids 0).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its size; on success
        // the strings in `pwd` point into `buf`, which outlives their use below.
        let rc = unsafe {
            match (&key, &name) {
                (_, Some(c)) => libc::getpwnam_r(
                    c.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                ),
                (Key::Id(uid), _) => {
                    libc::getpwuid_r(*uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
                }
                (Key::Name(_), None) => unreachable!("a name has its C string"),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: getpwnam_r succeeded: pw_name is a NUL-terminated string in `buf`.
        let n = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(Some((n, pwd.pw_uid, pwd.pw_gid)));
    }
}

/// A group's gid by name.
fn getgr(name: &str) -> io::Result<Option<u32>> {
    let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: a zeroed group is a valid out-parameter.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is its size.
        let rc = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then_some(grp.gr_gid));
    }
}

/// The groups `user` belongs to, `gid` included.
fn group_list(user: &str, gid: u32) -> Vec<u32> {
    let Ok(c) = CString::new(user) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` ids; getgrouplist writes at most that many and
        // sets `n` to the number it found.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= asked {
            n = asked * 2;
        }
        if n > 65_536 {
            return vec![gid];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_named_with_or_without_the_prefix() {
        assert_eq!(capability("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(capability("net_bind_service"), Some(10));
        assert_eq!(capability("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability("CAP_FLY"), None);
    }

    #[test]
    fn masked_modes_lose_setuid_setgid_sticky_and_world_write() {
        assert_eq!(mask_mode(0o4755, false), 0o755);
        assert_eq!(mask_mode(0o2775, false), 0o775);
        assert_eq!(mask_mode(0o1777, false), 0o775);
        assert_eq!(mask_mode(0o666, false), 0o664);
        assert_eq!(mask_mode(0o4755, true), 0o4755);
        assert_eq!(mask_mode(0o1777, true), 0o1775);
        assert_eq!(mask_mode(0o170_644, false), 0o644, "file type bits go");
    }

    #[test]
    fn users_resolve_by_name_and_by_number() {
        let root = Identity::resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let by_id = Identity::resolve("0", None).unwrap();
        assert_eq!(by_id.user, "root");
        let unknown = Identity::resolve("4000000000", Some("4000000001")).unwrap();
        assert_eq!((unknown.uid, unknown.gid), (4_000_000_000, 4_000_000_001));
        let err = Identity::resolve("no-such-user-here", None).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = Identity::resolve("root", Some("no-such-group-here")).unwrap_err();
        assert!(err.contains("group"), "{err}");
    }

    #[test]
    fn names_and_ids_are_checked() {
        assert!(valid_name("godwit-svc"));
        assert!(valid_name("_apt"));
        assert!(!valid_name("Root"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert_eq!(parse_id("1000"), Some(1000));
        assert_eq!(parse_id("4294967295"), None);
        assert_eq!(parse_id("10a"), None);
    }

    /// `/proc/self/status` of a shell run under `limits`, and its umask.
    async fn status_under(limits: &Limits) -> String {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "cat /proc/self/status; echo Umask-sh: $(umask)"])
            .stdout(std::process::Stdio::piped());
        limits.apply(&mut cmd);
        let out = cmd.output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
    }

    #[tokio::test]
    async fn a_child_takes_the_user_no_capabilities_no_new_privileges_and_the_umask() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to switch users");
            return;
        }
        let nobody = Identity::resolve("65534", None).unwrap();
        let limits = Limits {
            identity: Identity {
                groups: vec![65534, 4242],
                ..nobody
            },
            caps: 0,
            umask: 0o027,
        };
        let st = status_under(&limits).await;
        assert_eq!(field(&st, "Uid"), "65534\t65534\t65534\t65534");
        assert_eq!(field(&st, "Gid"), "65534\t65534\t65534\t65534");
        assert_eq!(field(&st, "Groups"), "4242 65534");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&st, set), "0000000000000000", "{set}");
        }
        assert_eq!(field(&st, "NoNewPrivs"), "1");
        assert_eq!(field(&st, "Umask-sh"), "0027");
        // One capability for a user other than root: in every set, and no other.
        let bind = Limits {
            caps: 1 << 10,
            umask: 0o077,
            ..limits.clone()
        };
        let st = status_under(&bind).await;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&st, set), "0000000000000400", "{set}");
        }
        assert_eq!(field(&st, "Umask-sh"), "0077");
        // Root, said explicitly, still has no capability it did not ask for.
        let root = Limits {
            identity: Identity::resolve("root", None).unwrap(),
            caps: 0,
            umask: 0o022,
        };
        let st = status_under(&root).await;
        assert_eq!(field(&st, "Uid"), "0\t0\t0\t0");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(&st, set), "0000000000000000", "{set}");
        }
        assert_eq!(field(&st, "NoNewPrivs"), "1");
    }

    #[test]
    fn a_tree_is_given_away_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::hard_link(outside.path(), dir.path().join("hard")).unwrap();
        // Without root the ids stay ours; with root, a real owner change.
        // SAFETY: geteuid cannot fail.
        let (uid, gid) = if unsafe { libc::geteuid() } == 0 {
            (12_345, 12_346)
        } else {
            let m = std::fs::metadata(dir.path()).unwrap();
            (m.uid(), m.gid())
        };
        let skipped = chown_tree(dir.path(), uid, gid).unwrap();
        assert_eq!(skipped, 1, "the hard link is left alone");
        for p in ["", "sub", "sub/f", "link"] {
            let m = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{p}");
        }
        let m = std::fs::metadata(outside.path()).unwrap();
        assert_ne!(m.uid(), 12_345, "the link's target is not changed");
    }
}
