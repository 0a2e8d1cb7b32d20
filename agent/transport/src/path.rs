//! Measuring the path to a peer: round-trip time from pings on the control channel, and
//! throughput from a bulk transfer on its own stream, timed by the receiver.
//!
//! Every agent offers this as the service `"path"` ([`register`]); migration
//! planning uses the figures (a target with more bandwidth and lower RTT is preferred, and the
//! pre-copy model needs both).
//!
//! The probe's payload is made and sent one block at a time, and the receiver drains it one
//! block at a time, so neither side holds more than a block of it. An agent runs one probe
//! that an operator asked for at a time ([`ProbeGate`]); another one asked meanwhile is refused
//! as busy, not queued.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::endpoint::{Channel, Endpoint};
use super::error::TransportError;
use super::service::{open, Services};
use super::wire::{drain_bulk, write_blocks};

/// Largest throughput probe a peer accepts.
pub const MAX_PROBE_BYTES: u64 = 256 << 20;
/// Pings per RTT measurement.
const PINGS: u32 = 5;
/// Block size of the throughput probe.
const PROBE_BLOCK: usize = 256 << 10;

/// One probe at a time: held while a probe an operator asked for runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeGate(std::sync::Arc<std::sync::atomic::AtomicBool>);

/// Proof that the [`ProbeGate`] is held; dropping it frees the gate.
#[derive(Debug)]
pub(crate) struct ProbePass(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ProbeGate {
    /// The gate, or `None` while another probe runs.
    pub(crate) fn try_enter(&self) -> Option<ProbePass> {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| ProbePass(self.0.clone()))
    }
}

impl Drop for ProbePass {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Requests on the control channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Answer with `Pong` carrying the same number.
    Ping {
        /// Echoed back.
        seq: u64,
    },
    /// Read a bulk transfer of `bytes` on the next stream and report how long it took.
    Probe {
        /// Bytes that will be sent.
        bytes: u64,
    },
}

/// Replies on the control channel.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Answer to `Ping`.
    Pong {
        /// The ping's number.
        seq: u64,
    },
    /// Answer to `Probe`: bytes received and the time from the first to the last.
    Probed {
        /// Bytes received.
        bytes: u64,
        /// Microseconds between the first block and the end of the transfer.
        micros: u64,
    },
    /// The request was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// What was measured on the path to a peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathMeasurement {
    /// The peer.
    pub node: String,
    /// Its transport address.
    pub addr: std::net::SocketAddr,
    /// Median application-level round trip of the pings, milliseconds.
    pub rtt_ms: f64,
    /// QUIC's smoothed RTT estimate after the measurement, milliseconds.
    pub quic_rtt_ms: f64,
    /// Bytes sent by the throughput probe (0: not measured).
    pub probe_bytes: u64,
    /// Throughput seen by the receiver, bytes per second (0 when not measured).
    pub bandwidth_bytes_per_second: f64,
    /// When it was measured, milliseconds since the Unix epoch.
    pub measured_at_unix_ms: u64,
}

/// Name of the path service.
pub(crate) const SERVICE: &str = "path";

/// Registers the path service: answers pings and throughput probes on its stream.
pub(crate) fn register(services: &Services) {
    services.register(SERVICE, |_peer, ch| serve(ch));
}

async fn serve(mut ch: Channel) {
    loop {
        let request = match ch.recv::<Request>().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let reply = match request {
            Request::Ping { seq } => Reply::Pong { seq },
            Request::Probe { bytes } if bytes > MAX_PROBE_BYTES => Reply::Refused {
                reason: format!("probe of {bytes} bytes is over {MAX_PROBE_BYTES}"),
            },
            Request::Probe { bytes } => match drain_bulk(&mut ch.recv).await {
                Ok((stats, _)) if stats.raw_bytes != bytes => Reply::Refused {
                    reason: format!("announced {bytes} bytes, received {}", stats.raw_bytes),
                },
                Ok((stats, took)) => Reply::Probed {
                    bytes: stats.raw_bytes,
                    micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                },
                Err(e) => Reply::Refused {
                    reason: e.to_string(),
                },
            },
        };
        if ch.send(&reply).await.is_err() {
            return;
        }
    }
}

/// Connects to `node` at `addr` and measures the path: RTT always, throughput with `bytes`
/// of incompressible data when `bytes > 0`.
pub async fn measure(
    endpoint: &Endpoint,
    addr: std::net::SocketAddr,
    node: &str,
    bytes: u64,
) -> Result<PathMeasurement, TransportError> {
    if bytes > MAX_PROBE_BYTES {
        return Err(TransportError::Frame(format!(
            "probe of {bytes} bytes is over {MAX_PROBE_BYTES}"
        )));
    }
    let peer = endpoint.connect(addr, node).await?;
    let mut ch = open(&peer, SERVICE).await?;
    let mut rtts = Vec::with_capacity(PINGS as usize);
    for seq in 0..u64::from(PINGS) {
        let sent = Instant::now();
        ch.send(&Request::Ping { seq }).await?;
        match ch.recv::<Reply>().await? {
            Some(Reply::Pong { seq: s }) if s == seq => rtts.push(sent.elapsed()),
            other => {
                return Err(TransportError::Frame(format!(
                    "expected pong {seq}, got {other:?}"
                )))
            }
        }
    }
    rtts.sort();
    let rtt = rtts[rtts.len() / 2];
    let mut bandwidth = 0.0;
    if bytes > 0 {
        ch.send(&Request::Probe { bytes }).await?;
        write_blocks(&mut ch.send, Incompressible::new(bytes, PROBE_BLOCK), None).await?;
        match ch.recv::<Reply>().await? {
            Some(Reply::Probed { bytes: got, micros }) if got == bytes => {
                bandwidth = got as f64 / (micros.max(1) as f64 / 1e6);
            }
            Some(Reply::Refused { reason }) => return Err(TransportError::Refused(reason)),
            other => {
                return Err(TransportError::Frame(format!(
                    "expected the probe's result, got {other:?}"
                )))
            }
        }
    }
    let measured = PathMeasurement {
        node: node.to_string(),
        addr,
        rtt_ms: rtt.as_secs_f64() * 1e3,
        quic_rtt_ms: peer.rtt().as_secs_f64() * 1e3,
        probe_bytes: bytes,
        bandwidth_bytes_per_second: bandwidth,
        measured_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    peer.close("measured");
    Ok(measured)
}

/// Pseudo-random bytes (xorshift), so no layer can compress them, made one block at a time.
struct Incompressible {
    left: u64,
    block: usize,
    x: u64,
}

impl Incompressible {
    fn new(len: u64, block: usize) -> Incompressible {
        Incompressible {
            left: len,
            block: block.max(8),
            x: 0x2545_f491_4f6c_dd1d,
        }
    }
}

impl Iterator for Incompressible {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let len = usize::try_from(self.left).map_or(self.block, |l| l.min(self.block));
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            out.extend_from_slice(&self.x.to_le_bytes());
        }
        out.truncate(len);
        self.left -= len as u64;
        Some(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_payload_comes_in_blocks_and_does_not_compress() {
        let blocks: Vec<Vec<u8>> = Incompressible::new(1_000_003, 65_536)
            .map(Result::unwrap)
            .collect();
        assert!(blocks.iter().all(|b| b.len() <= 65_536));
        let all: Vec<u8> = blocks.concat();
        assert_eq!(all.len(), 1_000_003);
        let packed = zstd::bulk::compress(&all, 3).unwrap();
        assert!(packed.len() > all.len() * 99 / 100, "{}", packed.len());
    }

    #[test]
    fn the_gate_lets_one_probe_in() {
        let gate = ProbeGate::default();
        let pass = gate.try_enter().unwrap();
        assert!(gate.try_enter().is_none());
        drop(pass);
        assert!(gate.try_enter().is_some());
    }
}
