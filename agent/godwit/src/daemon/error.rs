//! Why the agent did not start or did not stop cleanly, and the exit code each one gives.

/// Exit codes of the agent (sysexits.h where one fits): each is the code of a class of
/// [`StartError`], so that systemd and scripts can tell the failures apart.
pub mod exit {
    /// Runtime failure.
    pub const FAILURE: u8 = 1;
    /// A required capability is missing (BPF required but unavailable, address in use).
    pub const UNAVAILABLE: u8 = 69;
    /// The configuration is invalid or unreadable.
    pub const CONFIG: u8 = 78;
}

/// A start that failed: nothing is served, the process exits with [`StartError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `[gossip]` does not describe a usable mesh.
    #[error("invalid gossip configuration: {0}")]
    GossipConfig(#[source] crate::gossip::GossipError),
    /// The API's address cannot be bound.
    #[error("cannot serve the API: {0}")]
    Api(#[source] crate::api::ApiError),
    /// `probe.mode = "ebpf"` and the BPF programs did not load.
    #[error(transparent)]
    Sampler(#[from] crate::probe::SamplerError),
    /// A thread of the agent could not be spawned.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The gossip socket or server did not start.
    #[error("cannot start gossip: {0}")]
    Gossip(#[source] crate::gossip::GossipError),
    /// The transport's certificate is unusable or its address cannot be bound.
    #[error("cannot start the transport: {0}")]
    Transport(#[source] crate::transport::TransportError),
    /// `[[service]]` tables are configured and the host offers no cgroup v2 hierarchy to run
    /// them in: refused at start, not a warning while they silently do not run.
    #[error(
        "{services} [[service]] table(s) are configured but this host offers no usable cgroup v2 \
         hierarchy ({reason}), so no service could run. Run the agent where cgroup2 is mounted \
         (/sys/fs/cgroup in the host's mount namespace: `ip netns exec` remounts /sys and hides \
         it, `nsenter --net=/run/netns/NAME` does not), or remove the [[service]] tables"
    )]
    NoCgroupV2 { services: usize, reason: String },
}

impl StartError {
    /// The process exit code: [`exit::CONFIG`] for what the configuration says,
    /// [`exit::UNAVAILABLE`] for what the host does not offer, [`exit::FAILURE`] otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            // Restarting will not help: the host or the configuration must change.
            StartError::GossipConfig(_)
            | StartError::Transport(_)
            | StartError::NoCgroupV2 { .. } => exit::CONFIG,
            StartError::Api(_) | StartError::Sampler(_) | StartError::Gossip(_) => {
                exit::UNAVAILABLE
            }
            StartError::Runtime(_) | StartError::Thread { .. } => exit::FAILURE,
        }
    }
}

/// A component that did not stop cleanly (the process then exits with [`exit::FAILURE`]).
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The API server ended with an error.
    #[error("API server failed: {0}")]
    Api(#[source] crate::api::ApiError),
    /// A task or thread panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_error_has_the_code_of_its_class() {
        let io = || std::io::Error::other("x");
        let cases = [
            (
                StartError::GossipConfig(crate::gossip::GossipError::InvalidConfig("x".into())),
                exit::CONFIG,
            ),
            (
                StartError::Api(crate::api::ApiError::Bind {
                    addr: ([127, 0, 0, 1], 1).into(),
                    source: io(),
                }),
                exit::UNAVAILABLE,
            ),
            (StartError::Runtime(io()), exit::FAILURE),
            (
                StartError::Thread {
                    what: "sampler",
                    source: io(),
                },
                exit::FAILURE,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
