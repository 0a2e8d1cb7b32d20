//! `kvcheck`: writes verifiable keys to a `kvstore`, reads them back, and reports as one JSON
//! object on stdout.
//!
//! SIGINT or SIGTERM during a write phase ends the writes early; the read-back and the report
//! follow as after `--duration`.
//!
//! Exit codes: 0 when nothing acknowledged is missing or corrupt (for `write`, when every write
//! was acknowledged), 1 otherwise, 2 on bad usage or an unreadable ack file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, Parser, Subcommand};
use godwit_kvstore::check::{self, Acks, Client, ClientOptions, Report, WritePlan};

/// The checking client of the example service `kvstore`.
#[derive(Parser)]
#[command(name = "kvcheck", version)]
struct Args {
    /// Server address.
    #[arg(long, global = true, default_value = "127.0.0.1:7379")]
    addr: String,
    /// Seconds to wait for one reply (or a connect) before reconnecting.
    #[arg(long, global = true, default_value_t = 2.0)]
    timeout: f64,
    /// Seconds one request is retried, reconnecting with back-off, before giving up.
    #[arg(long, global = true, default_value_t = 30.0, alias = "patience")]
    retry_for: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write keys PREFIX-000001.. and record which writes were acknowledged.
    Write(WriteArgs),
    /// Read keys back and check their values.
    Verify(VerifyArgs),
    /// Write continuously for a duration, then read everything back.
    Run(WriteArgs),
}

#[derive(ClapArgs)]
struct WriteArgs {
    /// Number of keys to write.
    #[arg(long)]
    count: Option<u64>,
    /// Key prefix.
    #[arg(long, default_value = "k")]
    prefix: String,
    /// Writes per second (default: as fast as replies come; `run` defaults to 500).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to write for.
    #[arg(long)]
    duration: Option<f64>,
    /// Value length in bytes (1 to 200).
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Save the record of acknowledged writes to this file (JSON).
    #[arg(long)]
    acks: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct VerifyArgs {
    /// Number of keys to read (not needed with --acks).
    #[arg(long)]
    count: Option<u64>,
    /// Key prefix (taken from --acks when given).
    #[arg(long, default_value = "k")]
    prefix: String,
    /// Value length in bytes (taken from --acks when given).
    #[arg(long, default_value_t = 32)]
    value_size: usize,
    /// Read the record of acknowledged writes from this file, written by `write` or `run`.
    #[arg(long)]
    acks: Option<PathBuf>,
}

fn seconds(field: &'static str, secs: f64) -> Result<Duration, check::CheckError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| check::CheckError::Option {
            field,
            problem: format!("{secs} is not a positive number of seconds"),
        })
}

extern "C" fn stop_writing(_: libc::c_int) {
    check::STOP_WRITING.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn main() -> ExitCode {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, stop_writing as *const () as libc::sighandler_t) };
    }
    match run(Args::parse()) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("plain data serialises")
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kvcheck: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<Report, check::CheckError> {
    let start = Instant::now();
    let options = ClientOptions {
        addr: args.addr,
        request_timeout: seconds("timeout", args.timeout)?,
        retry_for: seconds("retry-for", args.retry_for)?,
    };
    let (write_args, read_back) = match args.command {
        Command::Write(w) => (w, false),
        Command::Run(mut w) => {
            w.rate = w.rate.or(Some(500.0));
            (w, true)
        }
        Command::Verify(v) => {
            let acks = match &v.acks {
                Some(path) => Acks::load(path)?,
                None => {
                    let count = v.count.ok_or_else(|| check::CheckError::Option {
                        field: "count",
                        problem: "give --count or --acks".into(),
                    })?;
                    // Without a record, every key is expected.
                    Acks {
                        prefix: v.prefix,
                        value_size: v.value_size,
                        written: count,
                        acknowledged: (1..=count).collect(),
                        last_seq: 0,
                    }
                }
            };
            let mut client = Client::new(options);
            let (verified, gave_up) = check::verify(&mut client, &acks);
            if let Some(e) = gave_up {
                eprintln!("kvcheck: {e}");
            }
            return Ok(Report::new(&acks, Some(verified), &client, start));
        }
    };
    let plan = WritePlan {
        prefix: write_args.prefix,
        value_size: write_args.value_size,
        count: write_args.count,
        duration: write_args
            .duration
            .map(|d| seconds("duration", d))
            .transpose()?,
        rate: write_args.rate,
    };
    plan.validate()?;
    let mut client = Client::new(options);
    let (acks, gave_up) = check::write(&mut client, &plan);
    if let Some(e) = &gave_up {
        eprintln!("kvcheck: {e}");
    }
    if let Some(path) = &write_args.acks {
        acks.save(path)?;
    }
    let verified = if read_back {
        let (verified, gave_up) = check::verify(&mut client, &acks);
        if let Some(e) = gave_up {
            eprintln!("kvcheck: {e}");
        }
        Some(verified)
    } else {
        None
    };
    Ok(Report::new(&acks, verified, &client, start))
}
