//! The checking client behind `kvcheck`: writes keys whose values can be recomputed, records
//! which writes were acknowledged, reads them back, and measures the longest time without a
//! successful reply.
//!
//! Keys are `<prefix>-000001`, `<prefix>-000002`, ...; the value of a key is
//! [`value_for`]`(key, size)`, so a read can be checked without remembering what was sent.
//! The client is synchronous: one request in flight, on one connection. When the connection
//! fails or a reply does not come within the request timeout, it reconnects (at once the first
//! time, then with a short back-off) and sends the same request again (writes are idempotent),
//! until the retry deadline.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::{ProtocolError, Reply};
use crate::store::{fnv1a64, MAX_VALUE};

/// Errors of the checking client.
#[derive(Debug, Error)]
pub enum CheckError {
    /// No successful reply for longer than the retry deadline.
    #[error("no reply from {addr} for {secs:.1} s, giving up: {last}")]
    GaveUp {
        /// The server address.
        addr: String,
        /// How long the request was retried.
        secs: f64,
        /// The last failure.
        last: String,
    },
    /// The ack file cannot be read or written.
    #[error("ack file {path}: {source}")]
    AckFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The ack file is not what `kvcheck` writes.
    #[error("ack file {path}: {source}")]
    AckFormat {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// An option is out of range.
    #[error("{field}: {problem}")]
    Option {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The key for index `i` (from 1).
pub fn key(prefix: &str, i: u64) -> String {
    format!("{prefix}-{i:06}")
}

/// The value written under `key`: `size` hex digits derived from the key.
pub fn value_for(key: &str, size: usize) -> String {
    let mut value = String::with_capacity(size + 16);
    let mut h = fnv1a64(key.as_bytes());
    while value.len() < size {
        value.push_str(&format!("{h:016x}"));
        h = fnv1a64(&h.to_le_bytes());
    }
    value.truncate(size);
    value
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of the server, resolved at every connect.
    pub addr: String,
    /// How long to wait for one reply (and for a connect) before reconnecting.
    pub request_timeout: Duration,
    /// How long one request is retried before the client gives up.
    pub retry_for: Duration,
}

type Conn = (BufReader<TcpStream>, TcpStream);

/// A reconnecting client that measures the gaps between successful replies.
pub struct Client {
    options: ClientOptions,
    conn: Option<Conn>,
    line: String,
    /// Failed attempts (connects, sends, reads, timeouts) and `ERR` replies.
    pub errors: u64,
    /// The last failure, for the report.
    pub last_error: Option<String>,
    last_success: Instant,
    longest_gap: Duration,
}

impl Client {
    /// A client that connects on first use; the gap clock starts now.
    pub fn new(options: ClientOptions) -> Self {
        Self {
            options,
            conn: None,
            line: String::new(),
            errors: 0,
            last_error: None,
            last_success: Instant::now(),
            longest_gap: Duration::ZERO,
        }
    }

    /// The longest time without a successful reply since the client was made, including the
    /// time since the last one.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap.max(self.last_success.elapsed())
    }

    fn connect(&self) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
        for addr in self.options.addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.options.request_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(self.options.request_timeout))?;
                    stream.set_write_timeout(Some(self.options.request_timeout))?;
                    return Ok((BufReader::new(stream.try_clone()?), stream));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn attempt(&mut self, request: &str) -> io::Result<Reply> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let (reader, writer) = self.conn.as_mut().expect("connected above");
        writer.write_all(format!("{request}\n").as_bytes())?;
        self.line.clear();
        if reader.read_line(&mut self.line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        let line = self.line.trim_end_matches(['\n', '\r']);
        Reply::parse(line).map_err(|e: ProtocolError| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Sends one request and returns its reply, reconnecting and resending on failure until
    /// the retry deadline. An `ERR` reply is returned (and counted in `errors`), not retried.
    pub fn call(&mut self, request: &str) -> Result<Reply, CheckError> {
        let mut first_failure: Option<Instant> = None;
        let mut backoff = Duration::from_millis(10);
        let mut retried = false;
        loop {
            match self.attempt(request) {
                Ok(reply) => {
                    let now = Instant::now();
                    self.longest_gap = self.longest_gap.max(now - self.last_success);
                    self.last_success = now;
                    if let Reply::Err(message) = &reply {
                        self.errors += 1;
                        self.last_error = Some(format!("ERR {message}"));
                    }
                    return Ok(reply);
                }
                Err(e) => {
                    self.conn = None;
                    self.errors += 1;
                    self.last_error = Some(e.to_string());
                    let since = *first_failure.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.options.retry_for {
                        return Err(CheckError::GaveUp {
                            addr: self.options.addr.clone(),
                            secs: since.elapsed().as_secs_f64(),
                            last: e.to_string(),
                        });
                    }
                    // The first failure is retried at once (a reset connection usually means
                    // the server moved or restarted: reconnecting is the quickest way to know);
                    // the back-off starts with the second.
                    if retried {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(250));
                    }
                    retried = true;
                }
            }
        }
    }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct WritePlan {
    /// Key prefix.
    pub prefix: String,
    /// Value length in bytes, 1 to [`MAX_VALUE`].
    pub value_size: usize,
    /// Stop after this many writes.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Writes per second; `None` is as fast as replies come.
    pub rate: Option<f64>,
}

impl WritePlan {
    /// Checks the plan's options.
    pub fn validate(&self) -> Result<(), CheckError> {
        if !(1..=MAX_VALUE).contains(&self.value_size) {
            return Err(CheckError::Option {
                field: "value-size",
                problem: format!("{} is outside 1..={MAX_VALUE}", self.value_size),
            });
        }
        if self.count.is_none() && self.duration.is_none() {
            return Err(CheckError::Option {
                field: "count",
                problem: "give --count, --duration or both".into(),
            });
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(CheckError::Option {
                    field: "rate",
                    problem: format!("{rate} is not a positive number"),
                });
            }
        }
        crate::store::check_key(key(&self.prefix, 1).as_bytes()).map_err(|e| CheckError::Option {
            field: "prefix",
            problem: e.to_string(),
        })
    }
}

/// The record of a write phase, also the content of an ack file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acks {
    /// Key prefix.
    pub prefix: String,
    /// Value length.
    pub value_size: usize,
    /// Writes sent (indices 1..=written).
    pub written: u64,
    /// Indices of the acknowledged writes.
    pub acknowledged: Vec<u64>,
    /// The largest sequence number acknowledged.
    pub last_seq: u64,
}

impl Acks {
    /// Writes the record as JSON.
    pub fn save(&self, path: &Path) -> Result<(), CheckError> {
        let text = serde_json::to_string(self).expect("plain data serialises");
        std::fs::write(path, text).map_err(|source| CheckError::AckFile {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a record written by [`Acks::save`].
    pub fn load(path: &Path) -> Result<Self, CheckError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckError::AckFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| CheckError::AckFormat {
            path: path.to_owned(),
            source,
        })
    }
}

/// Set to end every write phase early: the writes stop and the read-back still runs.
/// `kvcheck` sets it on SIGINT or SIGTERM, so a caller can stop a run when it has seen enough.
pub static STOP_WRITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs a write phase. Stops early (and returns what it has) if the server stays unreachable
/// past the retry deadline; `gave_up` then holds the reason.
pub fn write(client: &mut Client, plan: &WritePlan) -> (Acks, Option<CheckError>) {
    let mut acks = Acks {
        prefix: plan.prefix.clone(),
        value_size: plan.value_size,
        ..Acks::default()
    };
    let start = Instant::now();
    let period = plan.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next = start;
    for i in 1.. {
        if plan.count.is_some_and(|c| i > c)
            || plan.duration.is_some_and(|d| start.elapsed() >= d)
            || STOP_WRITING.load(std::sync::atomic::Ordering::Relaxed)
        {
            break;
        }
        if let Some(period) = period {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            // After a stall, carry on at the rate rather than bursting to catch up.
            next = next.max(now) + period;
        }
        let key = key(&plan.prefix, i);
        let request = format!("SET {key} {}", value_for(&key, plan.value_size));
        acks.written = i;
        match client.call(&request) {
            Ok(Reply::Ok { seq }) => {
                acks.acknowledged.push(i);
                acks.last_seq = acks.last_seq.max(seq);
            }
            Ok(Reply::Err(_)) => {}
            Ok(other) => {
                client.errors += 1;
                client.last_error = Some(format!("unexpected reply to SET: {other:?}"));
            }
            Err(e) => return (acks, Some(e)),
        }
    }
    (acks, None)
}

/// What a read-back found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Keys read back with their expected value.
    pub found: u64,
    /// Acknowledged keys not found, or not readable before the client gave up.
    pub missing_acknowledged: u64,
    /// Keys read back with a value other than the one written.
    pub corrupt: u64,
}

/// Reads back every key of `acks` (acknowledged or not) and checks its value.
pub fn verify(client: &mut Client, acks: &Acks) -> (Verified, Option<CheckError>) {
    let acknowledged: HashSet<u64> = acks.acknowledged.iter().copied().collect();
    let mut out = Verified::default();
    for i in 1..=acks.written {
        let key = key(&acks.prefix, i);
        match client.call(&format!("GET {key}")) {
            Ok(Reply::Val(value)) => {
                if value == value_for(&key, acks.value_size).as_bytes() {
                    out.found += 1;
                } else {
                    out.corrupt += 1;
                }
            }
            Ok(Reply::Nil | Reply::Err(_)) => {
                out.missing_acknowledged += u64::from(acknowledged.contains(&i));
            }
            Ok(other) => {
                client.errors += 1;
                client.last_error = Some(format!("unexpected reply to GET: {other:?}"));
                out.missing_acknowledged += u64::from(acknowledged.contains(&i));
            }
            Err(e) => {
                // Whatever could not be read cannot be shown to be there.
                out.missing_acknowledged += acknowledged.iter().filter(|&&a| a >= i).count() as u64;
                return (out, Some(e));
            }
        }
    }
    (out, None)
}

/// The JSON object `kvcheck` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Writes sent.
    pub written: u64,
    /// Writes acknowledged with `OK`.
    pub acknowledged: u64,
    /// Acknowledged writes not found on read-back (`null` when nothing was read back).
    pub missing_acknowledged: Option<u64>,
    /// Keys read back with a wrong value (`null` when nothing was read back).
    pub corrupt: Option<u64>,
    /// The longest time without a successful reply, in milliseconds.
    pub longest_gap_ms: u64,
    /// Failed attempts and `ERR` replies.
    pub errors: u64,
    /// Keys read back intact (`null` when nothing was read back).
    pub found: Option<u64>,
    /// The largest sequence number acknowledged.
    pub last_seq: u64,
    /// Wall time of the whole command, in milliseconds.
    pub duration_ms: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

impl Report {
    /// Whether every acknowledged write was found intact (and, for a write-only run, whether
    /// every write was acknowledged).
    pub fn passed(&self) -> bool {
        match (self.missing_acknowledged, self.corrupt) {
            (Some(missing), Some(corrupt)) => missing == 0 && corrupt == 0,
            _ => self.acknowledged == self.written,
        }
    }

    /// Builds the report from a write record, an optional read-back and the client.
    pub fn new(acks: &Acks, verified: Option<Verified>, client: &Client, start: Instant) -> Self {
        Self {
            written: acks.written,
            acknowledged: acks.acknowledged.len() as u64,
            missing_acknowledged: verified.map(|v| v.missing_acknowledged),
            corrupt: verified.map(|v| v.corrupt),
            longest_gap_ms: client.longest_gap().as_millis() as u64,
            errors: client.errors,
            found: verified.map(|v| v.found),
            last_seq: acks.last_seq,
            duration_ms: start.elapsed().as_millis() as u64,
            last_error: client.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_derived() {
        assert_eq!(key("k", 1), "k-000001");
        assert_eq!(key("k", 1_234_567), "k-1234567");
        let v = value_for("k-000001", 40);
        assert_eq!(v.len(), 40);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(v, value_for("k-000001", 40), "deterministic");
        assert_ne!(v, value_for("k-000002", 40), "differs by key");
        assert_eq!(&value_for("k-000001", 200)[..40], v);
        assert!(crate::store::check_value(value_for("x", MAX_VALUE).as_bytes()).is_ok());
    }

    #[test]
    fn plans_are_validated() {
        let plan = WritePlan {
            prefix: "k".into(),
            value_size: 32,
            count: Some(10),
            duration: None,
            rate: None,
        };
        assert!(plan.validate().is_ok());
        let bad = [
            (
                WritePlan {
                    value_size: 0,
                    ..plan.clone()
                },
                "value-size: 0 is outside 1..=200",
            ),
            (
                WritePlan {
                    value_size: 201,
                    ..plan.clone()
                },
                "value-size: 201",
            ),
            (
                WritePlan {
                    count: None,
                    ..plan.clone()
                },
                "count: give --count",
            ),
            (
                WritePlan {
                    rate: Some(0.0),
                    ..plan.clone()
                },
                "rate: 0 is not",
            ),
            (
                WritePlan {
                    prefix: "a b".into(),
                    ..plan.clone()
                },
                "prefix: key: byte 1",
            ),
            (
                WritePlan {
                    prefix: "p".repeat(60),
                    ..plan.clone()
                },
                "prefix: key: 67 bytes",
            ),
        ];
        for (plan, message) in bad {
            let e = plan.validate().unwrap_err().to_string();
            assert!(e.starts_with(message), "{e}");
        }
    }

    #[test]
    fn report_pass_rules() {
        let mut r = Report {
            written: 10,
            acknowledged: 9,
            ..Report::default()
        };
        assert!(
            !r.passed(),
            "a write-only run passes only when every write was acknowledged"
        );
        r.missing_acknowledged = Some(0);
        r.corrupt = Some(0);
        assert!(r.passed(), "an unacknowledged write may be lost");
        r.corrupt = Some(1);
        assert!(!r.passed());
        r.corrupt = Some(0);
        r.missing_acknowledged = Some(1);
        assert!(!r.passed());
        let json = serde_json::to_value(&r).unwrap();
        for field in [
            "written",
            "acknowledged",
            "missing_acknowledged",
            "corrupt",
            "longest_gap_ms",
            "errors",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn ack_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("godwit-kvstore-acks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks.json");
        let acks = Acks {
            prefix: "p".into(),
            value_size: 8,
            written: 3,
            acknowledged: vec![1, 3],
            last_seq: 7,
        };
        acks.save(&path).unwrap();
        let loaded = Acks::load(&path);
        std::fs::write(&path, "{\"prefix\":1}").unwrap();
        let bad = Acks::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(loaded.unwrap(), acks);
        assert!(bad.unwrap_err().to_string().starts_with("ack file"));
    }
}
