//! Health checks and the health state machine.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::identity::Limits;
use super::spec::HealthSpec;

/// A service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Running, not yet seen healthy (or no check configured and just started).
    Starting,
    /// The last check passed (or no check is configured and the process runs).
    Healthy,
    /// `failures` consecutive checks failed after it was healthy, or it did not pass a check
    /// within `start_timeout_ms` of its start.
    Unhealthy,
    /// Given up on: a crash loop, or it cannot be started.
    Failed,
    /// Not running.
    Stopped,
}

/// Turns check results into [`Health`]: starting until the first pass; healthy on a pass;
/// unhealthy after `failures` consecutive failures, or when no check passed within the start
/// timeout; and due for a restart once unhealthy for the restart limit. Time comes in as an
/// argument.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    failures_needed: u32,
    consecutive_failures: u32,
    health: Health,
    started: Instant,
    start_timeout: Duration,
    /// Zero: never due for a restart.
    restart_after: Duration,
    unhealthy_since: Option<Instant>,
}

impl HealthTracker {
    /// A tracker for a process started at `started`.
    pub fn new(spec: &HealthSpec, started: Instant) -> HealthTracker {
        HealthTracker {
            failures_needed: spec.failures.max(1),
            consecutive_failures: 0,
            health: Health::Starting,
            started,
            start_timeout: Duration::from_millis(spec.start_timeout_ms),
            restart_after: Duration::from_millis(spec.unhealthy_restart_ms),
            unhealthy_since: None,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one check that ended at `now`; returns the new health.
    pub fn record(&mut self, passed: bool, now: Instant) -> Health {
        if passed {
            self.consecutive_failures = 0;
            self.health = Health::Healthy;
            self.unhealthy_since = None;
            return self.health;
        }
        self.consecutive_failures += 1;
        let turns_unhealthy = match self.health {
            Health::Healthy => self.consecutive_failures >= self.failures_needed,
            Health::Starting => now.saturating_duration_since(self.started) >= self.start_timeout,
            _ => false,
        };
        if turns_unhealthy {
            self.health = Health::Unhealthy;
            self.unhealthy_since = Some(now);
        }
        self.health
    }

    /// How long it has been unhealthy, when it is past the restart limit.
    pub fn restart_due(&self, now: Instant) -> Option<Duration> {
        let since = self.unhealthy_since?;
        let for_ = now.saturating_duration_since(since);
        (self.health == Health::Unhealthy
            && !self.restart_after.is_zero()
            && for_ >= self.restart_after)
            .then_some(for_)
    }

    /// Moves the clocks on by `paused` (the time the service was frozen), so a freeze counts
    /// neither towards the start timeout nor towards the restart limit.
    pub fn pause(&mut self, paused: Duration) {
        self.started += paused;
        if let Some(t) = &mut self.unhealthy_since {
            *t += paused;
        }
    }
}

/// Runs one check; true when it passed within the timeout. A command runs as `limits` say
/// (the service's user, capabilities and umask).
pub async fn check(spec: &HealthSpec, limits: Option<&Limits>) -> bool {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let run = async {
        if let Some(addr) = spec.tcp {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return false;
            };
            return tcp_answers(stream, spec.send.as_deref(), spec.expect.as_deref()).await;
        }
        if let Some(url) = &spec.http {
            return http_ok(url).await;
        }
        if let Some(cmd) = &spec.command {
            let mut command = tokio::process::Command::new(&cmd[0]);
            command
                .args(&cmd[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            if let Some(limits) = limits {
                limits.apply(&mut command);
            }
            return command.status().await.is_ok_and(|s| s.success());
        }
        false
    };
    tokio::time::timeout(timeout, run).await.unwrap_or(false)
}

/// Sends `send` (if any) on `stream`; with `expect`, true only when the reply starts with it.
async fn tcp_answers(
    mut stream: tokio::net::TcpStream,
    send: Option<&str>,
    expect: Option<&str>,
) -> bool {
    if let Some(send) = send {
        if stream.write_all(send.as_bytes()).await.is_err() {
            return false;
        }
    }
    let Some(expect) = expect else {
        return true;
    };
    let mut got = vec![0u8; expect.len()];
    stream.read_exact(&mut got).await.is_ok() && got == expect.as_bytes()
}

/// `GET http://host:port/path` answers 2xx.
async fn http_ok(url: &str) -> bool {
    let url = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, "/"),
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(authority).await else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.x 2yz"
    head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(failures: u32, start_timeout_ms: u64, unhealthy_restart_ms: u64) -> HealthSpec {
        HealthSpec {
            tcp: None,
            send: None,
            expect: None,
            http: None,
            command: Some(vec!["true".into()]),
            interval_ms: 100,
            timeout_ms: 100,
            failures,
            start_timeout_ms,
            unhealthy_restart_ms,
            settle_ms: 20,
        }
    }

    #[test]
    fn health_moves_as_the_checks_say() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = HealthTracker::new(&spec(3, 60_000, 0), t0);
        assert_eq!(
            t.record(false, at(100)),
            Health::Starting,
            "failures before the first pass"
        );
        assert_eq!(t.record(true, at(200)), Health::Healthy);
        assert_eq!(t.record(false, at(300)), Health::Healthy);
        assert_eq!(t.record(false, at(400)), Health::Healthy);
        assert_eq!(
            t.record(false, at(500)),
            Health::Unhealthy,
            "third failure in a row"
        );
        assert_eq!(t.restart_due(at(1_000_000)), None, "0: never restarted");
        assert_eq!(t.record(true, at(600)), Health::Healthy);
    }

    #[test]
    fn a_start_that_never_passes_times_out_and_persisting_failures_are_due_a_restart() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = HealthTracker::new(&spec(3, 1000, 2000), t0);
        assert_eq!(t.record(false, at(999)), Health::Starting);
        assert_eq!(
            t.record(false, at(1000)),
            Health::Unhealthy,
            "start timeout"
        );
        assert_eq!(t.restart_due(at(2999)), None);
        assert_eq!(
            t.restart_due(at(3000)),
            Some(Duration::from_millis(2000)),
            "unhealthy for the restart limit"
        );
        // A pass clears it.
        assert_eq!(t.record(true, at(3100)), Health::Healthy);
        assert_eq!(t.restart_due(at(10_000)), None);
        // Unhealthy again after failures; a freeze of 5 s does not count.
        for ms in [3200, 3300, 3400] {
            t.record(false, at(ms));
        }
        assert_eq!(t.health(), Health::Unhealthy);
        t.pause(Duration::from_secs(5));
        assert_eq!(
            t.restart_due(at(5400)),
            None,
            "the frozen time is not counted"
        );
        assert!(t.restart_due(at(10_400)).is_some());
    }

    #[test]
    fn a_freeze_does_not_count_towards_the_start_timeout() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = HealthTracker::new(&spec(3, 1000, 2000), t0);
        t.pause(Duration::from_secs(10));
        assert_eq!(t.record(false, at(10_500)), Health::Starting);
        assert_eq!(t.record(false, at(11_000)), Health::Unhealthy);
    }

    #[tokio::test]
    async fn tcp_and_command_checks_really_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = |tcp, command| HealthSpec {
            tcp,
            send: None,
            expect: None,
            http: None,
            command,
            interval_ms: 100,
            timeout_ms: 500,
            failures: 1,
            start_timeout_ms: 1000,
            unhealthy_restart_ms: 0,
            settle_ms: 20,
        };
        assert!(check(&spec(Some(addr), None), None).await);
        drop(listener);
        assert!(!check(&spec(Some(addr), None), None).await);
        assert!(check(&spec(None, Some(vec!["true".into()])), None).await);
        assert!(!check(&spec(None, Some(vec!["false".into()])), None).await);
    }

    /// A server that answers every line with `reply`.
    async fn answering(reply: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(reply.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_tcp_check_with_expect_passes_only_on_the_expected_reply() {
        let spec = |addr, expect: &str| HealthSpec {
            tcp: Some(addr),
            send: Some("PING\r\n".into()),
            expect: Some(expect.into()),
            http: None,
            command: None,
            interval_ms: 100,
            timeout_ms: 500,
            failures: 1,
            start_timeout_ms: 1000,
            unhealthy_restart_ms: 0,
            settle_ms: 20,
        };
        let ready = answering("+PONG\r\n").await;
        let loading = answering("-LOADING Redis is loading the dataset in memory\r\n").await;
        assert!(check(&spec(ready, "+PONG"), None).await);
        assert!(!check(&spec(loading, "+PONG"), None).await);
        // A server that never answers fails within the timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!check(&spec(silent.local_addr().unwrap(), "+PONG"), None).await);
    }
}
