//! Health checks and the health state machine.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spec::HealthSpec;

/// A service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Running, not yet seen healthy (or no check configured and just started).
    Starting,
    /// The last check passed (or no check is configured and the process runs).
    Healthy,
    /// `failures` consecutive checks failed after it was healthy.
    Unhealthy,
    /// Given up on: a crash loop, or it cannot be started.
    Failed,
    /// Not running.
    Stopped,
}

/// Turns check results into [`Health`]: starting until the first pass; healthy on a pass;
/// unhealthy after `failures` consecutive failures.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    failures_needed: u32,
    consecutive_failures: u32,
    health: Health,
}

impl HealthTracker {
    /// A tracker for a freshly started process.
    pub fn new(failures_needed: u32) -> HealthTracker {
        HealthTracker {
            failures_needed: failures_needed.max(1),
            consecutive_failures: 0,
            health: Health::Starting,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one check; returns the new health.
    pub fn record(&mut self, passed: bool) -> Health {
        if passed {
            self.consecutive_failures = 0;
            self.health = Health::Healthy;
        } else {
            self.consecutive_failures += 1;
            if self.health == Health::Healthy && self.consecutive_failures >= self.failures_needed {
                self.health = Health::Unhealthy;
            }
        }
        self.health
    }
}

/// Runs one check; true when it passed within the timeout.
pub async fn check(spec: &HealthSpec) -> bool {
    let timeout = Duration::from_millis(spec.timeout_ms);
    let run = async {
        if let Some(addr) = spec.tcp {
            return tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        if let Some(url) = &spec.http {
            return http_ok(url).await;
        }
        if let Some(cmd) = &spec.command {
            return tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success());
        }
        false
    };
    tokio::time::timeout(timeout, run).await.unwrap_or(false)
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

    #[test]
    fn health_moves_as_the_checks_say() {
        let mut t = HealthTracker::new(3);
        assert_eq!(
            t.record(false),
            Health::Starting,
            "failures before the first pass"
        );
        assert_eq!(t.record(true), Health::Healthy);
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(false), Health::Healthy);
        assert_eq!(t.record(false), Health::Unhealthy, "third failure in a row");
        assert_eq!(t.record(true), Health::Healthy);
    }

    #[tokio::test]
    async fn tcp_and_command_checks_really_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spec = |tcp, command| HealthSpec {
            tcp,
            http: None,
            command,
            interval_ms: 100,
            timeout_ms: 500,
            failures: 1,
        };
        assert!(check(&spec(Some(addr), None)).await);
        drop(listener);
        assert!(!check(&spec(Some(addr), None)).await);
        assert!(check(&spec(None, Some(vec!["true".into()]))).await);
        assert!(!check(&spec(None, Some(vec!["false".into()]))).await);
    }
}
