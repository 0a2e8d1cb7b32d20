//! `godwit path NODE`: the agent measures the path to another member over the transport
//! (RTT from pings, throughput from a bulk probe timed by the receiver).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct PathArgs {
    /// The member to measure the path to.
    node: String,
    /// Bytes of the throughput probe (0: RTT only).
    #[arg(long, default_value_t = 16 << 20)]
    bytes: u64,
    #[command(flatten)]
    api: super::client::ActOn,
    /// Print the agent's JSON document.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: PathArgs) -> ExitCode {
    let path = format!("/v1/transport/probe/{}?bytes={}", args.node, args.bytes);
    super::request(
        "path",
        &args.api.target(),
        hyper::Method::POST,
        &path,
        Duration::from_secs(120),
        args.json,
        render,
    )
}

/// One line: peer, address, RTT, QUIC's RTT estimate, throughput.
pub(super) fn render(doc: &Value) -> String {
    let f = |k: &str| doc[k].as_f64().unwrap_or(f64::NAN);
    let bw = f("bandwidth_bytes_per_second");
    format!(
        "{} at {}: rtt {:.2} ms (quic {:.2} ms), throughput {}\n",
        doc["node"].as_str().unwrap_or("?"),
        doc["addr"].as_str().unwrap_or("?"),
        f("rtt_ms"),
        f("quic_rtt_ms"),
        if bw > 0.0 {
            format!(
                "{:.1} MB/s ({:.0} Mbit/s) over {} MiB",
                bw / 1e6,
                bw * 8.0 / 1e6,
                doc["probe_bytes"].as_u64().unwrap_or(0) >> 20
            )
        } else {
            "not measured".into()
        }
    )
}
