//! The fence guard: a small process apart from the agent that kills the node's services when
//! the agent stops petting it (hung, `SIGSTOP`ped, deadlocked, crashed), and keeps a hardware
//! watchdog alive only while it is petted.
//!
//! The agent starts it as `godwit fence-guard --cgroups DIR [--watchdog PATH]` through
//! [`GuardHandle`] and talks to it over a pipe (the guard's stdin), one line per message:
//!
//! - `pet <deadline_ms>`: the agent's lease holds until `deadline_ms`, an absolute
//!   [`BootTime`] (milliseconds on `CLOCK_BOOTTIME`, which keeps counting through suspend).
//!   The guard keeps the latest deadline: a pet never moves it earlier, and a pet whose
//!   deadline has already passed is ignored (the lease it speaks of is over).
//! - `stop`: clean shutdown. The guard disarms the watchdog (the magic close character `V`)
//!   and exits 0 without killing anything.
//!
//! Until the first valid pet the guard is unarmed: nothing runs under a lease yet. Once armed,
//! it checks the clock at least every [`TICK`] (50 ms); when the deadline passes it kills
//! every service cgroup, every `*.service` directory under `DIR` (`cgroup.kill` where the
//! kernel has it, 5.14 and later; else `cgroup.freeze`, `SIGKILL` to every process of the
//! cgroup and its descendants, thaw), logs on stderr what it killed, and stops the watchdog's
//! keepalives, so a node whose kernel or agent stays wedged is reset by the hardware after the
//! device's own timeout.
//!
//! After a kill the guard keeps running and waits: it does not keep killing what is started
//! there later (only the agent starts services, and an agent that starts them again has a new
//! lease and pets again). A new valid pet re-arms it and resumes the keepalives. When the pipe
//! closes without `stop` (the agent died), an armed deadline still runs out: the kill happens
//! then, and the guard exits (its watchdog closed without `V`, so the hardware resets the node
//! unless a new guard opens the device in time).
//!
//! The guard must outlive a crashed agent: it sets no parent-death signal and ignores
//! `SIGINT`, `SIGHUP` and `SIGTERM` (a terminal's, or systemd's stop of the agent's unit, which
//! signals every process of the unit's cgroup: a guard that died with its crashed agent would
//! fence nothing), so it ends only on `stop`, after acting on its last deadline once its agent
//! is gone, or by `SIGKILL`. It locks its memory (`mlockall`) and asks the OOM killer to spare
//! it, so it still acts under memory pressure ([`harden`]). It stays in the agent's cgroup,
//! outside the services' cgroups it kills.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::clock::BootTime;

/// The subcommand of the `godwit` binary that runs the guard.
pub const SUBCOMMAND: &str = "fence-guard";

/// The guard looks at the clock at least this often.
pub const TICK: Duration = Duration::from_millis(50);

/// How long a kill waits for the killed cgroups to report empty before it logs and moves on.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest line the guard reads; anything longer is refused as a whole.
const MAX_LINE: usize = 128;

/// The byte written to the watchdog device on each pet (anything but the magic `V`).
const KEEPALIVE: &[u8] = b"k";

/// What the guard guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardOptions {
    /// The services' parent cgroup directory, e.g. `/sys/fs/cgroup/unified/godwit.slice` (its
    /// `*.service` children are killed).
    pub cgroups: PathBuf,
    /// A watchdog device (`/dev/watchdog`), if the node has one.
    pub watchdog: Option<PathBuf>,
}

/// A message from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The lease holds until this time.
    Pet(BootTime),
    /// Disarm and exit without killing.
    Stop,
}

impl Message {
    /// The line that carries it, newline included.
    pub fn line(&self) -> String {
        match self {
            Message::Pet(deadline) => format!("pet {}\n", deadline.0),
            Message::Stop => "stop\n".to_string(),
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Message, String> {
        let mut words = line.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("stop"), None, _) => Ok(Message::Stop),
            (Some("pet"), Some(ms), None) => ms
                .parse::<u64>()
                .map(|ms| Message::Pet(BootTime(ms)))
                .map_err(|e| format!("pet: deadline {ms:?}: {e}")),
            _ => Err(format!("{line:?}: expected `pet <deadline_ms>` or `stop`")),
        }
    }
}

/// How the guard ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardExit {
    /// It was told `stop`: disarmed, nothing killed at the end.
    Stopped,
    /// The pipe closed without `stop` and nothing was armed (or the last deadline had already
    /// been acted on): nothing left to do.
    Closed,
    /// The pipe closed without `stop` while armed: the services were killed at the deadline.
    Fenced,
}

/// How a cgroup was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// `1` written to `cgroup.kill` (Linux 5.14 and later).
    CgroupKill,
    /// Frozen, `SIGKILL` to each process, thawed (older kernels).
    Signals,
}

/// One service cgroup a fence killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Killed {
    /// The cgroup directory.
    pub cgroup: PathBuf,
    /// The processes in it (and below it) when the kill began.
    pub pids: Vec<u32>,
    /// How.
    pub method: KillMethod,
    /// Whether the kernel reported it empty within 2 s (`populated 0`); `None` when it has no
    /// `cgroup.events` to tell.
    pub emptied: Option<bool>,
}

/// One deadline that passed, and what was killed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The deadline that passed.
    pub deadline: BootTime,
    /// When the guard saw it pass.
    pub at: BootTime,
    /// The cgroups killed (those that were empty too).
    pub killed: Vec<Killed>,
}

/// What a guard did, returned when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardReport {
    /// How it ended.
    pub exit: GuardExit,
    /// Every fence, in order.
    pub fences: Vec<Fence>,
    /// Valid pets received.
    pub pets: u64,
    /// Lines refused as malformed (each logged).
    pub bad_lines: u64,
}

/// What the input thread hands to the loop.
enum Input {
    Line(String),
    TooLong,
    Closed,
}

/// Runs the guard on its stdin: [`harden`], then [`run`]. What `godwit fence-guard` does.
pub fn run_stdin(opts: &GuardOptions) -> GuardReport {
    harden();
    run(opts, io::stdin())
}

/// Makes this process hard to stop by accident: `SIGINT`, `SIGHUP` and `SIGTERM` ignored,
/// memory locked and an OOM score of -1000, so it still runs when the node is short of memory.
/// The lock is `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: the pages the guard touches
/// stay resident, not the whole `godwit` binary it runs from (measured on a debug build:
/// 13 MiB resident, against 48 MiB with everything locked); kernels before 4.4, which lack
/// `MCL_ONFAULT`, lock everything. No parent-death signal: it must outlive its agent.
/// Each failure is said once on stderr and ignored.
pub fn harden() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let all = libc::MCL_CURRENT | libc::MCL_FUTURE;
    // SAFETY: mlockall takes flags only.
    let locked = unsafe { libc::mlockall(all | libc::MCL_ONFAULT) } == 0
        // SAFETY: as above; EINVAL before 4.4, which has no MCL_ONFAULT.
        || unsafe { libc::mlockall(all) } == 0;
    if !locked {
        log(format_args!(
            "mlockall: {} (memory not locked; it may be paged out under pressure)",
            io::Error::last_os_error()
        ));
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log(format_args!(
            "oom_score_adj: {e} (the OOM killer may pick it)"
        ));
    }
}

fn log(args: std::fmt::Arguments<'_>) {
    eprintln!("godwit fence-guard[{}]: {args}", std::process::id());
}

/// Runs the guard loop over `input` (the pipe from the agent) until `stop`, or until the pipe
/// has closed and no armed deadline is left. See the module documentation.
pub fn run(opts: &GuardOptions, input: impl Read + Send + 'static) -> GuardReport {
    let (tx, rx) = mpsc::channel();
    // The reader blocks on the pipe; the loop below never does for longer than a tick. The
    // thread ends with the pipe (or with the process).
    let reader = std::thread::Builder::new()
        .name("fence-guard-in".into())
        // Locked memory: a small stack, not the default 2 MiB.
        .stack_size(64 * 1024)
        .spawn(move || read_lines(input, tx));
    if let Err(e) = reader {
        log(format_args!("cannot start the input thread: {e}"));
        return GuardReport {
            exit: GuardExit::Closed,
            fences: Vec::new(),
            pets: 0,
            bad_lines: 0,
        };
    }
    let mut guard = Guard {
        opts,
        watchdog: Watchdog::open(opts.watchdog.as_deref()),
        deadline: None,
        fired: false,
        report: GuardReport {
            exit: GuardExit::Closed,
            fences: Vec::new(),
            pets: 0,
            bad_lines: 0,
        },
    };
    // Touch the listing path once, so its pages are resident (and locked) before they are
    // needed under pressure.
    let _ = service_dirs(&opts.cgroups)
        .map(|dirs| dirs.iter().map(|d| pids_below(d).len()).sum::<usize>());
    log(format_args!(
        "guarding {} (watchdog: {}); unarmed until the first pet",
        opts.cgroups.display(),
        guard.watchdog.describe()
    ));
    let mut closed = false;
    loop {
        let wait = guard.next_wait();
        let input = if closed {
            std::thread::sleep(wait);
            None
        } else {
            match rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Input::Closed),
            }
        };
        match input {
            Some(Input::Line(line)) => match Message::parse(&line) {
                Ok(Message::Pet(deadline)) => guard.pet(deadline),
                Ok(Message::Stop) => {
                    guard.watchdog.disarm();
                    log(format_args!("stop: disarmed, exiting"));
                    guard.report.exit = GuardExit::Stopped;
                    return guard.report;
                }
                Err(e) => {
                    guard.report.bad_lines += 1;
                    log(format_args!("ignored a line: {e}"));
                }
            },
            Some(Input::TooLong) => {
                guard.report.bad_lines += 1;
                log(format_args!("ignored a line longer than {MAX_LINE} bytes"));
            }
            Some(Input::Closed) => {
                closed = true;
                match guard.armed() {
                    Some(d) => log(format_args!(
                        "the pipe closed without stop: the agent is gone; killing at the \
                         deadline ({} ms from now)",
                        d.since(BootTime::now()).as_millis()
                    )),
                    None => log(format_args!(
                        "the pipe closed without stop, nothing armed: exiting"
                    )),
                }
            }
            None => {}
        }
        guard.check();
        if closed && guard.armed().is_none() {
            guard.report.exit = if guard.fired {
                GuardExit::Fenced
            } else {
                GuardExit::Closed
            };
            return guard.report;
        }
    }
}

/// Reads lines from `input` and sends them on; a line longer than [`MAX_LINE`] is sent as
/// [`Input::TooLong`] once and skipped to its end. A read error counts as the pipe closing.
fn read_lines(input: impl Read, tx: mpsc::Sender<Input>) {
    let mut r = BufReader::new(input);
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut skipping = false;
    loop {
        buf.clear();
        match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let whole = buf.last() == Some(&b'\n');
                let msg = if skipping {
                    None
                } else if !whole && buf.len() >= MAX_LINE {
                    Some(Input::TooLong)
                } else {
                    let line = String::from_utf8_lossy(&buf);
                    Some(Input::Line(line.trim_end_matches(['\n', '\r']).to_string()))
                };
                skipping = !whole && buf.len() >= MAX_LINE;
                if let Some(msg) = msg {
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log(format_args!("reading the pipe: {e}; taken as closed"));
                break;
            }
        }
    }
    let _ = tx.send(Input::Closed);
}

struct Guard<'a> {
    opts: &'a GuardOptions,
    watchdog: Watchdog,
    /// The latest deadline petted.
    deadline: Option<BootTime>,
    /// Whether `deadline` has passed and been acted on.
    fired: bool,
    report: GuardReport,
}

impl Guard<'_> {
    /// The deadline still to act on.
    fn armed(&self) -> Option<BootTime> {
        self.deadline.filter(|_| !self.fired)
    }

    /// How long the loop may wait for input before it must look at the clock.
    fn next_wait(&self) -> Duration {
        match self.armed() {
            Some(d) => d
                .since(BootTime::now())
                .clamp(Duration::from_millis(1), TICK),
            None => TICK,
        }
    }

    fn pet(&mut self, deadline: BootTime) {
        let now = BootTime::now();
        if deadline <= now {
            self.report.bad_lines += 1;
            log(format_args!(
                "ignored a pet whose deadline has passed ({} ms ago)",
                now.since(deadline).as_millis()
            ));
            return;
        }
        self.report.pets += 1;
        if self.fired {
            log(format_args!(
                "re-armed: deadline in {} ms",
                deadline.since(now).as_millis()
            ));
            self.fired = false;
        } else if self.deadline.is_none() {
            log(format_args!(
                "armed: deadline in {} ms",
                deadline.since(now).as_millis()
            ));
        }
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.max(deadline)));
        self.watchdog.keepalive();
    }

    /// Kills the services if the deadline has passed.
    fn check(&mut self) {
        let Some(deadline) = self.armed() else {
            return;
        };
        let now = BootTime::now();
        if now < deadline {
            return;
        }
        self.fired = true;
        log(format_args!(
            "no pet: the deadline passed {} ms ago; killing the services under {}{}",
            now.since(deadline).as_millis(),
            self.opts.cgroups.display(),
            if self.watchdog.is_open() {
                " and stopping the watchdog's keepalives"
            } else {
                ""
            }
        ));
        let killed = kill_services(&self.opts.cgroups);
        for k in &killed {
            log(format_args!(
                "killed {} ({:?}, {} process(es): {:?}){}",
                k.cgroup.display(),
                k.method,
                k.pids.len(),
                k.pids,
                match k.emptied {
                    Some(true) => "",
                    Some(false) => "; still populated after 2 s",
                    None => "",
                }
            ));
        }
        if killed.is_empty() {
            log(format_args!("no service cgroup to kill"));
        }
        self.report.fences.push(Fence {
            deadline,
            at: now,
            killed,
        });
    }
}

/// Kills every service cgroup (`*.service` child directory) of `parent`: all of them first
/// (frozen or killed at once), then waits up to 2 s for them to report empty. A missing or
/// unreadable `parent` kills nothing and is logged.
pub fn kill_services(parent: &Path) -> Vec<Killed> {
    let dirs = match service_dirs(parent) {
        Ok(dirs) => dirs,
        Err(e) => {
            log(format_args!("cannot list {}: {e}", parent.display()));
            return Vec::new();
        }
    };
    let mut killed: Vec<Killed> = dirs.into_iter().map(|d| kill_cgroup(&d)).collect();
    let until = Instant::now() + EMPTY_TIMEOUT;
    for k in &mut killed {
        k.emptied = wait_empty(&k.cgroup, until);
    }
    killed
}

/// The `*.service` directories directly under `parent`, sorted.
fn service_dirs(parent: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        let is_service = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".service"));
        if is_service && entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Kills everything in `dir` and below it, frozen tasks included; does not wait.
fn kill_cgroup(dir: &Path) -> Killed {
    let pids = pids_below(dir);
    if write_file(&dir.join("cgroup.kill"), "1").is_ok() {
        return Killed {
            cgroup: dir.to_path_buf(),
            pids,
            method: KillMethod::CgroupKill,
            emptied: None,
        };
    }
    // Before 5.14: freeze so that nothing forks while the processes are listed and killed,
    // kill, thaw (a killed task that is frozen dies once thawed). Two rounds catch what forked
    // before the freeze took hold.
    let froze = write_file(&dir.join("cgroup.freeze"), "1").is_ok();
    for _ in 0..2 {
        for pid in pids_below(dir) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    if froze {
        if let Err(e) = write_file(&dir.join("cgroup.freeze"), "0") {
            log(format_args!("thawing {}: {e}", dir.display()));
        }
    }
    Killed {
        cgroup: dir.to_path_buf(),
        pids,
        method: KillMethod::Signals,
        emptied: None,
    }
}

/// The pids of `dir`'s `cgroup.procs` and of every cgroup below it.
fn pids_below(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_below(&e.path()));
            }
        }
    }
    pids
}

/// Waits until `dir`'s `cgroup.events` says `populated 0` or `until`; `None` without the file.
fn wait_empty(dir: &Path, until: Instant) -> Option<bool> {
    let events = dir.join("cgroup.events");
    loop {
        let text = std::fs::read_to_string(&events).ok()?;
        if !text.lines().any(|l| l.trim() == "populated 1") {
            return Some(true);
        }
        if Instant::now() >= until {
            return Some(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// The watchdog device, if one is configured and opened. Opening a real device arms it.
struct Watchdog {
    path: Option<PathBuf>,
    file: Option<File>,
    /// A failed keepalive is said once.
    write_failed: bool,
}

impl Watchdog {
    fn open(path: Option<&Path>) -> Watchdog {
        let file = path.and_then(|p| match OpenOptions::new().write(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                log(format_args!(
                    "cannot open the watchdog {}: {e}; guarding by killing cgroups only",
                    p.display()
                ));
                None
            }
        });
        Watchdog {
            path: path.map(Path::to_path_buf),
            file,
            write_failed: false,
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some()
    }

    fn describe(&self) -> String {
        match (&self.path, &self.file) {
            (Some(p), Some(_)) => format!("{} armed", p.display()),
            (Some(p), None) => format!("{} unavailable", p.display()),
            (None, _) => "none".into(),
        }
    }

    fn keepalive(&mut self) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = f.write_all(KEEPALIVE) {
            if !self.write_failed {
                self.write_failed = true;
                log(format_args!("watchdog keepalive failed: {e}"));
            }
        }
    }

    /// Writes the magic close character and closes the device: the driver stops the timer.
    fn disarm(&mut self) {
        if let Some(mut f) = self.file.take() {
            if let Err(e) = f.write_all(b"V") {
                log(format_args!("watchdog magic close failed: {e}"));
            }
        }
    }
}

/// The agent's end of its guard: spawns `godwit fence-guard` and pets it over a pipe.
///
/// Dropping the handle without [`GuardHandle::stop`] only closes the pipe: the guard then
/// kills the services at the last deadline petted, as if the agent had died.
#[derive(Debug)]
pub struct GuardHandle {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl GuardHandle {
    /// Spawns the guard from this process's own executable
    /// (`<current exe> fence-guard --cgroups DIR [--watchdog PATH]`).
    pub fn spawn(opts: &GuardOptions) -> io::Result<GuardHandle> {
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            // The file was replaced or removed (an upgrade): the running image still is.
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        GuardHandle::spawn_program(&exe, opts)
    }

    /// Spawns the guard from `program`, a `godwit` binary.
    pub fn spawn_program(program: &Path, opts: &GuardOptions) -> io::Result<GuardHandle> {
        let mut cmd = Command::new(program);
        cmd.arg(SUBCOMMAND).arg("--cgroups").arg(&opts.cgroups);
        if let Some(w) = &opts.watchdog {
            cmd.arg("--watchdog").arg(w);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        if let Some(s) = &stdin {
            // A guard that does not read (stopped, wedged) must never block the agent: a full
            // pipe makes `pet` fail at once instead.
            let fd = s.as_raw_fd();
            // SAFETY: fcntl on a descriptor this handle owns.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
            }
        }
        Ok(GuardHandle { child, stdin })
    }

    /// The guard's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the guard the lease holds until `deadline`. Never blocks: fails when the pipe is
    /// full (the guard is not reading) or closed (it is gone).
    pub fn pet(&self, deadline: BootTime) -> io::Result<()> {
        self.send(Message::Pet(deadline))
    }

    fn send(&self, msg: Message) -> io::Result<()> {
        let Some(mut stdin) = self.stdin.as_ref() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "guard stopped"));
        };
        let line = msg.line();
        // Shorter than PIPE_BUF: written whole or not at all.
        let n = stdin.write(line.as_bytes())?;
        if n != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write to the guard ({n} of {} bytes)", line.len()),
            ));
        }
        Ok(())
    }

    /// Disarms the guard (`stop`) and waits up to `timeout` for it to exit; a guard that does
    /// not exit by then is killed and the wait fails with `TimedOut`. When `stop` cannot be
    /// written (the guard is gone, or its pipe is full) the error is returned at once and the
    /// pipe closed: a guard still running then acts on its last deadline.
    pub fn stop(mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let sent = self.send(Message::Stop);
        self.stdin = None;
        sent?;
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the fence guard did not exit within {timeout:?} of stop"),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        // Closing the pipe is all: the guard acts on its own from here.
        self.stdin = None;
        let _ = self.child.try_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use std::os::unix::process::ExitStatusExt;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors this test then owns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn in_ms(ms: u64) -> BootTime {
        BootTime::now().add(Duration::from_millis(ms))
    }

    fn send(w: &mut File, msg: Message) {
        w.write_all(msg.line().as_bytes()).unwrap();
    }

    /// A directory laid out like a parent cgroup with one service whose `cgroup.procs` lists
    /// a real `sleep`, without `cgroup.kill` (a kernel before 5.14), and a non-service sibling.
    struct FakeCgroups {
        dir: tempfile::TempDir,
        sleep: std::process::Child,
    }

    impl FakeCgroups {
        fn new() -> FakeCgroups {
            let dir = tempfile::tempdir().unwrap();
            let sleep = Command::new("sleep").arg("1000").spawn().unwrap();
            let svc = dir.path().join("kv.service");
            std::fs::create_dir(&svc).unwrap();
            std::fs::write(svc.join("cgroup.procs"), format!("{}\n", sleep.id())).unwrap();
            std::fs::write(svc.join("cgroup.freeze"), "0").unwrap();
            let other = dir.path().join("other.scope");
            std::fs::create_dir(&other).unwrap();
            std::fs::write(other.join("cgroup.kill"), "").unwrap();
            FakeCgroups { dir, sleep }
        }

        fn opts(&self, watchdog: Option<PathBuf>) -> GuardOptions {
            GuardOptions {
                cgroups: self.dir.path().to_path_buf(),
                watchdog,
            }
        }

        fn sleep_killed(&mut self) -> bool {
            match self.sleep.try_wait().unwrap() {
                Some(status) => status.signal() == Some(libc::SIGKILL),
                None => false,
            }
        }
    }

    impl Drop for FakeCgroups {
        fn drop(&mut self) {
            let _ = self.sleep.kill();
            let _ = self.sleep.wait();
        }
    }

    fn start(opts: GuardOptions) -> (File, std::thread::JoinHandle<GuardReport>) {
        let (r, w) = pipe();
        let t = std::thread::spawn(move || run(&opts, r));
        (w, t)
    }

    #[test]
    fn messages_parse_and_bad_ones_are_refused_by_name() {
        assert_eq!(
            Message::parse("pet 12345"),
            Ok(Message::Pet(BootTime(12345)))
        );
        assert_eq!(Message::parse(" stop "), Ok(Message::Stop));
        let line = Message::Pet(BootTime(7)).line();
        assert_eq!(
            Message::parse(line.trim_end()),
            Ok(Message::Pet(BootTime(7)))
        );
        for bad in ["", "pet", "pet -1", "pet 1 2", "pet x", "stop now", "kill"] {
            let e = Message::parse(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn petted_guard_kills_nothing_and_stop_disarms_the_watchdog() {
        let mut cg = FakeCgroups::new();
        let wd = cg.dir.path().join("watchdog");
        std::fs::write(&wd, "").unwrap();
        let (mut w, t) = start(cg.opts(Some(wd.clone())));
        for _ in 0..8 {
            send(&mut w, Message::Pet(in_ms(500)));
            std::thread::sleep(Duration::from_millis(100));
        }
        // 800 ms of petting against a 500 ms deadline: still alive.
        assert!(!cg.sleep_killed());
        send(&mut w, Message::Stop);
        let report = t.join().unwrap();
        assert_eq!(report.exit, GuardExit::Stopped);
        assert_eq!(report.pets, 8);
        assert!(report.fences.is_empty());
        let written = std::fs::read_to_string(&wd).unwrap();
        assert_eq!(written, format!("{}V", "k".repeat(8)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!cg.sleep_killed(), "killed after stop");
    }

    #[test]
    fn a_silent_agent_is_fenced_with_signals_and_the_watchdog_starves() {
        let mut cg = FakeCgroups::new();
        let wd = cg.dir.path().join("watchdog");
        std::fs::write(&wd, "").unwrap();
        let (mut w, t) = start(cg.opts(Some(wd.clone())));
        send(&mut w, Message::Pet(in_ms(100)));
        send(&mut w, Message::Pet(in_ms(150)));
        // Silent, pipe open: a stopped agent.
        let killed = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            cg.sleep_killed()
        });
        assert!(killed, "not killed within 2 s of a 150 ms deadline");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            std::fs::read_to_string(&wd).unwrap(),
            "kk",
            "no keepalive after the deadline"
        );
        let svc = cg.dir.path().join("kv.service");
        assert_eq!(
            std::fs::read_to_string(svc.join("cgroup.freeze")).unwrap(),
            "0",
            "thawed"
        );
        // A pet whose deadline has passed re-arms nothing; a new one does, and feeds the dog.
        send(&mut w, Message::Pet(BootTime(1)));
        send(&mut w, Message::Pet(in_ms(10_000)));
        send(&mut w, Message::Stop);
        let report = t.join().unwrap();
        assert_eq!(report.exit, GuardExit::Stopped);
        assert_eq!(report.pets, 3);
        assert_eq!(report.bad_lines, 1);
        assert_eq!(report.fences.len(), 1);
        let fence = &report.fences[0];
        assert!(fence.at >= fence.deadline);
        assert_eq!(fence.killed.len(), 1, "only *.service: {:?}", fence.killed);
        assert_eq!(fence.killed[0].cgroup, svc);
        assert_eq!(fence.killed[0].method, KillMethod::Signals);
        assert_eq!(fence.killed[0].pids, vec![cg.sleep.id()]);
        assert_eq!(std::fs::read_to_string(&wd).unwrap(), "kkkV");
    }

    #[test]
    fn a_closed_pipe_kills_at_the_deadline_not_before_and_exits() {
        let mut cg = FakeCgroups::new();
        // A kernel with cgroup.kill: the guard writes it (a plain file here kills nothing).
        let svc = cg.dir.path().join("kv.service");
        std::fs::write(svc.join("cgroup.kill"), "").unwrap();
        let (mut w, t) = start(cg.opts(None));
        let deadline = in_ms(300);
        send(&mut w, Message::Pet(deadline));
        drop(w);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            std::fs::read_to_string(svc.join("cgroup.kill")).unwrap(),
            ""
        );
        let report = t.join().unwrap();
        assert!(BootTime::now() >= deadline);
        assert_eq!(report.exit, GuardExit::Fenced);
        assert_eq!(report.fences.len(), 1);
        assert_eq!(report.fences[0].killed[0].method, KillMethod::CgroupKill);
        assert_eq!(
            std::fs::read_to_string(svc.join("cgroup.kill")).unwrap(),
            "1"
        );
        assert!(
            !cg.sleep_killed(),
            "the fake cgroup.kill kills nothing; no signals sent"
        );
    }

    #[test]
    fn garbage_is_counted_and_a_closed_unarmed_guard_exits_without_killing() {
        let mut cg = FakeCgroups::new();
        let (mut w, t) = start(cg.opts(Some(cg.dir.path().join("no-such-watchdog"))));
        w.write_all(b"hello\n").unwrap();
        w.write_all(&[b'x'; 1000]).unwrap();
        w.write_all(b"\n\xff\xfe\n").unwrap();
        drop(w);
        let report = t.join().unwrap();
        assert_eq!(report.exit, GuardExit::Closed);
        assert_eq!(report.bad_lines, 3, "{report:?}");
        assert!(report.fences.is_empty());
        assert!(!cg.sleep_killed());
    }

    #[test]
    fn a_pet_never_moves_the_deadline_earlier() {
        let cg = FakeCgroups::new();
        let (mut w, t) = start(cg.opts(None));
        let late = in_ms(400);
        send(&mut w, Message::Pet(late));
        send(&mut w, Message::Pet(in_ms(50)));
        drop(w);
        let report = t.join().unwrap();
        assert_eq!(report.fences.len(), 1);
        assert_eq!(report.fences[0].deadline, late);
        assert!(report.fences[0].at >= late);
    }
}
