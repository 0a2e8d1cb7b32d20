//! `godwit ca init` and `godwit cert issue`: the cluster CA, and the node and operator
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
        } => {
            let (issued, name, dns) = match (node, operator) {
                (_, Some(op)) => (
                    transport::issue_operator(&ca_dir, &op, &out),
                    format!("operator {op}"),
                    transport::operator_dns_name(&op),
                ),
                (Some(node), None) => (
                    transport::issue_node(&ca_dir, &node, &out),
                    node.clone(),
                    transport::node_dns_name(&node),
                ),
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
    }
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
