//! `godwit ca init`, `godwit cert issue` and `godwit cert renew`: the cluster CA, and the node and operator
//! certificates of the agent-to-agent transport (mutual TLS).

use std::path::PathBuf;
use std::process::ExitCode;

use super::exit;
use crate::transport::{self, TransportError};

/// The cluster certificate authority.
#[derive(Debug, clap::Args)]
pub(super) struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CaCommand {
    /// Create the cluster CA (ca.pem, ca.key with mode 0600) in a new or empty directory.
    Init {
        /// Directory of the CA. Keep ca.key offline or on one trusted host.
        #[arg(long, default_value = "/etc/godwit/ca")]
        dir: PathBuf,
        /// Name of the cluster, written in the CA's subject.
        #[arg(long, default_value = "godwit")]
        cluster: String,
    },
}

/// Node and operator certificates.
#[derive(Debug, clap::Args)]
pub(super) struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Issue a node's certificate (<node>.pem, <node>.key, and a copy of ca.pem) into a
    /// directory; copy it to the node's /etc/godwit/tls. With --operator, an operator's
    /// (<name>.operator.pem, .key): client only, for `godwit migrate --operator NAME`.
    #[command(group(clap::ArgGroup::new("who").required(true).args(["node", "operator"])))]
    Issue {
        /// The node's name (`[node] name`): 1 to 63 of a-z, 0-9 and '-'.
        #[arg(long)]
        node: Option<String>,
        /// An operator's name (`<name>.operator.godwit`): 1 to 63 of a-z, 0-9 and '-'.
        #[arg(long)]
        operator: Option<String>,
        /// Directory of the CA.
        #[arg(long, default_value = "/etc/godwit/ca")]
        ca_dir: PathBuf,
        /// Where to write the node's files.
        #[arg(long)]
        out: PathBuf,
        /// Days a node's certificate is valid, from today (renew it with `godwit cert renew`).
        #[arg(long, default_value_t = transport::DEFAULT_NODE_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
    /// Re-issue a node's certificate for the key it has, from the CA that issued it, replacing
    /// <node>.pem in one rename. The agent takes it at its next start. The old certificate
    /// stays valid until it expires: list its fingerprint in tls_dir/deny to refuse it sooner.
    Renew {
        /// The node's name.
        #[arg(long)]
        node: String,
        /// Directory of the CA.
        #[arg(long, default_value = "/etc/godwit/ca")]
        ca_dir: PathBuf,
        /// The node's directory (ca.pem, <node>.pem, <node>.key).
        #[arg(long, default_value = "/etc/godwit/tls")]
        dir: PathBuf,
        /// Days the new certificate is valid, from today.
        #[arg(long, default_value_t = transport::DEFAULT_NODE_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

pub(super) fn ca(args: CaArgs) -> ExitCode {
    match args.command {
        CaCommand::Init { dir, cluster } => report(
            transport::init_ca(&dir, &cluster)
                .map(|cert| format!("cluster CA created: {}", cert.display())),
        ),
    }
}

pub(super) fn cert(args: CertArgs) -> ExitCode {
    match args.command {
        CertCommand::Issue {
            node,
            operator,
            ca_dir,
            out,
            days,
        } => {
            let (issued, name, dns) = match (node, operator) {
                (_, Some(op)) => (
                    transport::issue_operator(&ca_dir, &op, &out),
                    format!("operator {op}"),
                    transport::operator_dns_name(&op),
                ),
                (Some(node), None) => {
                    return report(
                        transport::issue_node_for(&ca_dir, &node, &out, days)
                            .map(|i| describe("certificate", &node, &i)),
                    )
                }
                // clap requires one of them.
                (None, None) => return ExitCode::from(exit::USAGE),
            };
            report(issued.map(|f| {
                format!(
                    "certificate for {name} ({dns}): {}, key {}, CA {}",
                    f.cert.display(),
                    f.key.display(),
                    f.ca.display()
                )
            }))
        }
        CertCommand::Renew {
            node,
            ca_dir,
            dir,
            days,
        } => report(
            transport::renew_node(&ca_dir, &node, &dir, days)
                .map(|i| describe("renewed certificate", &node, &i)),
        ),
    }
}

/// What `issue` and `renew` print about a node's certificate: where, until when, fingerprint.
fn describe(what: &str, node: &str, i: &transport::Issued) -> String {
    format!(
        "{what} for {node} ({}): {}, key {}, CA {}\nvalid for {} days, until {} (UTC)\n\
         sha256 fingerprint {} (list it in tls_dir/deny to refuse it)",
        transport::node_dns_name(node),
        i.files.cert.display(),
        i.files.key.display(),
        i.files.ca.display(),
        i.days,
        i.not_after,
        i.fingerprint
    )
}

fn report(result: Result<String, TransportError>) -> ExitCode {
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("godwit: {e}");
            ExitCode::from(match e {
                TransportError::InvalidNodeName(_) => exit::USAGE,
                _ => exit::FAILURE,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: CertCommand,
    }

    #[test]
    fn issue_and_renew_say_how_long_a_certificate_lives() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        transport::init_ca(&ca, "t").unwrap();
        let out = dir.path().join("n1");
        let issued = transport::issue_node_for(&ca, "n1", &out, 30).unwrap();
        let text = describe("certificate", "n1", &issued);
        assert!(text.contains("valid for 30 days, until "), "{text}");
        assert!(text.contains(&issued.fingerprint), "{text}");
        let renewed = transport::renew_node(&ca, "n1", &out, 90).unwrap();
        let text = describe("renewed certificate", "n1", &renewed);
        assert!(text.contains("valid for 90 days"), "{text}");
        assert!(renewed.not_after > issued.not_after);
        // The default lifetime is a year; 0 days is refused.
        let cli = Cli::try_parse_from(["cert", "issue", "--node", "n1", "--out", "x"]).unwrap();
        assert!(matches!(cli.command, CertCommand::Issue { days: 365, .. }));
        assert!(Cli::try_parse_from(["cert", "renew", "--node", "n1", "--days", "0"]).is_err());
    }
}
