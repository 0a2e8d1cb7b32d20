//! The `"control"` transport service: the only way to start a migration.
//!
//! A caller connects to the agent's QUIC endpoint with a certificate of the cluster CA (mutual
//! TLS: the handshake has proven who it is, [`Principal`]), opens this service and sends one
//! [`Request::Migrate`]. The agent checks that the caller may start migrations
//! ([`authorize`]: a node of the cluster, such as a peer or the coordinator, or an
//! operator; then the fencing token, [`Fencing`]), then runs the migration and answers
//! with a [`Reply::Progress`] at each phase and round, and the final [`Reply::Report`]. A
//! refused request gets [`Reply::Refused`]; it is appended to the audit log and counted like a
//! migration ([`Migrator::refuse`]). The audit log names the caller by its certificate
//! (`requested_by`: `operator alice`, `node n1`).
//!
//! A peer whose certificate is not of the cluster CA never gets this far: the handshake
//! refuses it (and counts it in the transport's statistics).
//!
//! [`migrate`] is the client (`godwit migrate`).
//!
//! The coordinator's leader also orders image pre-staging here ([`Request::Prestage`]): this
//! node pushes an image it holds to another node ahead of a likely move, so that the move
//! sends no image. Only the leader this node knows, in the very term the order carries, may
//! order one ([`authorize_prestage`]): an operator's certificate may not, since an order that
//! skipped the leader would skip its budget and caps too (an operator pushes an image from
//! the node's own API socket, `POST /v1/images/{id}/push`, as root or the `godwit` group).
//! [`prestage`] is the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::agent::{MigrateRequest, MigrationReport, Migrator};
use super::drive::SwitchMode;
use super::error::MigrateError;
use super::progress::Progress;
use godwit_transport::{open, Channel, Endpoint, PeerInfo, Principal, Services};

/// Name of the service.
pub const SERVICE: &str = "control";

/// A request to the control service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Move a managed service of the called agent to another node.
    Migrate(MigrateCall),
    /// Push an image the called agent holds to another node (the coordinator's pre-staging).
    Prestage(PrestageCall),
}

/// Which image to copy where, on whose authority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrestageCall {
    /// The image (its content hash, as `ImageStore` names it).
    pub image: String,
    /// The node to copy it to.
    pub to: String,
    /// The term of the coordinator that orders it (see [`Fencing`]); required.
    pub fencing_token: u64,
}

/// What to move where, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateCall {
    /// The managed service.
    pub service: String,
    /// The node to move it to.
    pub to: String,
    /// How to switch over (`None`: as the model says).
    pub mode: Option<SwitchMode>,
    /// The downtime target, milliseconds.
    pub downtime_ms: u64,
    /// Re-hash the whole state on both sides at the cut-over.
    pub full_verify: bool,
    /// The term of the coordinator that orders the move (see [`Fencing`]); `None` for an
    /// operator's or a peer's request.
    pub fencing_token: Option<u64>,
    /// Replace a service of that name on the target (its definition and state there go).
    pub replace: bool,
}

/// What the agent answers: progress updates, then one report or one refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    /// Where the migration is.
    Progress(Progress),
    /// The migration ended: its report, and whether it committed.
    Report {
        /// The report.
        report: Box<MigrationReport>,
        /// The service now runs on the target.
        committed: bool,
    },
    /// The caller may not start this migration (nothing was tried); audited.
    Refused {
        /// Why.
        reason: String,
    },
    /// The request could not be served (no such target, migration off here): nothing was
    /// tried.
    Error {
        /// Why.
        reason: String,
    },
    /// A pre-staging order ended: the target holds the image.
    Staged {
        /// What moved (only the chunks the target lacked).
        stats: godwit_image::PushStats,
    },
}

/// Finds a node's transport address (from the mesh).
pub type Resolver = Arc<dyn Fn(&str) -> Result<SocketAddr, MigrateError> + Send + Sync>;

/// Who may start a migration from this node: any node of the cluster CA (a peer, the
/// coordinator) and any operator of it; the handshake has proven which. Then the fencing
/// token, if any, must pass `fencing`.
pub fn authorize(
    caller: &Principal,
    fencing_token: Option<u64>,
    fencing: &Fencing,
) -> Result<(), MigrateError> {
    match caller {
        Principal::Node(_) | Principal::Operator(_) => {}
    }
    match fencing_token {
        None => Ok(()),
        Some(t) => fencing(caller, t).map_err(MigrateError::Refused),
    }
}

/// Who may order a pre-staging copy from this node: only a node of the cluster (never an
/// operator), and only with a token `fencing` accepts, that is as the leader this node knows
/// in that term.
pub fn authorize_prestage(
    caller: &Principal,
    fencing_token: u64,
    fencing: &Fencing,
) -> Result<(), MigrateError> {
    match caller {
        Principal::Node(_) => fencing(caller, fencing_token).map_err(MigrateError::Refused),
        Principal::Operator(_) => Err(MigrateError::Refused(format!(
            "{caller} may not order pre-staging: only the coordinator's leader does (push an \
             image from the node's API socket: POST /v1/images/ID/push?to=NODE)"
        ))),
    }
}

/// Checks a fencing token: a move the coordinator orders carries the term it leads in, and
/// the source refuses it unless the caller is the leader it knows for that very term, so a
/// deposed coordinator (or a caller replaying an old order) cannot move services. Whatever
/// passes here still commits only through the log's compare-and-set on the service's epoch.
pub type Fencing = Arc<dyn Fn(&Principal, u64) -> Result<(), String> + Send + Sync>;

/// The check of an agent without a coordinator: a token is a claim of a coordinator's
/// authority that nothing here can check, so it is refused.
pub fn no_coordinator() -> Fencing {
    Arc::new(|_, t| {
        Err(format!(
            "fencing token {t} cannot be checked: this cluster has no coordinator"
        ))
    })
}

/// Registers the service: migrations from this node by `migrator`, targets found by
/// `resolve`, fencing tokens checked by `fencing`. Operators may open it.
pub fn register(services: &Services, migrator: Arc<Migrator>, resolve: Resolver, fencing: Fencing) {
    services.register_for_operators(SERVICE, move |peer, ch| {
        serve(peer, ch, migrator.clone(), resolve.clone(), fencing.clone())
    });
}

async fn serve(
    peer: PeerInfo,
    mut ch: Channel,
    migrator: Arc<Migrator>,
    resolve: Resolver,
    fencing: Fencing,
) {
    let call = match ch.recv::<Request>().await {
        Ok(Some(Request::Migrate(call))) => call,
        Ok(Some(Request::Prestage(call))) => {
            let reply = serve_prestage(&peer, call, &migrator, &resolve, &fencing).await;
            let _ = ch.send(&reply).await;
            let _ = ch.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), ch.stopped()).await;
            return;
        }
        Ok(None) => return,
        Err(e) => {
            warn!(caller = %peer.principal, error = %e, "bad control request");
            return;
        }
    };
    let caller = peer.principal.to_string();
    let reply = match (
        authorize(&peer.principal, call.fencing_token, &fencing),
        resolve(&call.to),
    ) {
        (Err(why), _) => {
            let why = why.to_string();
            migrator.refuse(&call.service, &call.to, &caller, &why);
            Reply::Refused { reason: why }
        }
        (Ok(()), Err(why)) => Reply::Error {
            reason: why.to_string(),
        },
        (Ok(()), Ok(addr)) => {
            info!(caller, service = %call.service, to = %call.to, "migration requested");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let req = MigrateRequest {
                service: call.service,
                to: call.to,
                addr,
                mode: call.mode,
                downtime_target: Duration::from_millis(call.downtime_ms),
                requested_by: caller,
                full_verify: call.full_verify,
                progress: Some(tx),
                replace: call.replace,
            };
            // Its own task: a caller that stops reading (or goes away) never holds it up.
            let run = migrator
                .tasks
                .clone()
                .spawn(async move { migrator.migrate(req).await });
            let mut gone = false;
            // Ends when the migration drops its senders, that is when it is over.
            while let Some(p) = rx.recv().await {
                if !gone && ch.send(&Reply::Progress(p)).await.is_err() {
                    gone = true;
                }
            }
            match run.await {
                Ok(Some(report)) => Reply::Report {
                    committed: report.result == "committed",
                    report: Box::new(report),
                },
                Ok(None) => Reply::Error {
                    reason: "the agent stopped before the migration ended; its journal \
                             resolves it at the next start"
                        .into(),
                },
                Err(e) => Reply::Error {
                    reason: format!("the migration task failed: {e}"),
                },
            }
        }
    };
    let _ = ch.send(&reply).await;
    let _ = ch.finish();
    // Let the last frames reach the caller before the stream goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), ch.stopped()).await;
}

/// Serves a pre-staging order: checks the caller's authority, then pushes the image (only the
/// chunks the target lacks move).
async fn serve_prestage(
    peer: &PeerInfo,
    call: PrestageCall,
    migrator: &Migrator,
    resolve: &Resolver,
    fencing: &Fencing,
) -> Reply {
    let caller = peer.principal.to_string();
    if let Err(why) = authorize_prestage(&peer.principal, call.fencing_token, fencing) {
        warn!(caller, image = %call.image, to = %call.to, reason = %why, "pre-staging refused");
        return Reply::Refused {
            reason: why.to_string(),
        };
    }
    let error = |reason: String| {
        warn!(caller, image = %call.image, to = %call.to, reason = %reason, "pre-staging not served");
        Reply::Error { reason }
    };
    let Some(store) = migrator.images.clone() else {
        return error(format!("{} has no image store", migrator.node));
    };
    let id = match godwit_image::Digest::parse(&call.image) {
        Ok(id) => id,
        Err(e) => return error(format!("image {:?}: {e}", call.image)),
    };
    if call.to == migrator.node {
        return error(format!("{} is this node", call.to));
    }
    if !store.has_image(&id) {
        return error(format!("{} does not hold {id}", migrator.node));
    }
    let addr = match resolve(&call.to) {
        Ok(a) => a,
        Err(e) => return error(e.to_string()),
    };
    let target = match migrator.transport.endpoint().connect(addr, &call.to).await {
        Ok(p) => p,
        Err(e) => return error(format!("cannot reach {}: {e}", call.to)),
    };
    let pushed = godwit_image::push(&target, &store, &id).await;
    target.close("pre-staged");
    match pushed {
        Ok(stats) => {
            info!(
                caller, image = %id, to = %call.to, chunks_sent = stats.chunks_sent,
                bytes_sent = stats.bytes_sent, "image pre-staged"
            );
            Reply::Staged { stats }
        }
        Err(e) => error(format!("push to {} failed: {e}", call.to)),
    }
}

/// How a pre-staging order ended, for the leader.
#[derive(Debug, Clone)]
pub enum Staged {
    /// The target holds the image; what moved.
    Done(godwit_image::PushStats),
    /// The caller may not order it.
    Refused(String),
    /// The agent could not serve it (or the push failed).
    Error(String),
}

/// Asks the agent `node` at `addr` to push an image it holds to another node (`call`), from
/// `endpoint` (whose identity is the caller's, the leader's).
pub async fn prestage(
    endpoint: &Endpoint,
    addr: SocketAddr,
    node: &str,
    call: PrestageCall,
) -> Result<Staged, MigrateError> {
    let peer = endpoint.connect(addr, node).await?;
    let mut ch = open(&peer, SERVICE).await?;
    ch.send(&Request::Prestage(call)).await?;
    let answer = match ch.recv::<Reply>().await? {
        Some(Reply::Staged { stats }) => Staged::Done(stats),
        Some(Reply::Refused { reason }) => Staged::Refused(reason),
        Some(Reply::Error { reason }) => Staged::Error(reason),
        Some(other) => Staged::Error(format!("unexpected answer {other:?}")),
        None => {
            return Err(MigrateError::Peer(format!(
                "{node} closed the control stream before answering"
            )))
        }
    };
    peer.close("done");
    Ok(answer)
}

/// How a migration request ended, for the caller.
#[derive(Debug, Clone)]
pub enum Answer {
    /// It ran: the report (JSON), and whether it committed.
    Report {
        /// The [`super::agent::MigrationReport`].
        report: serde_json::Value,
        /// The service now runs on the target.
        committed: bool,
    },
    /// The caller may not start it (audited on the agent).
    Refused(String),
    /// The agent could not serve it.
    Error(String),
}

/// Asks the agent `node` at `addr` to run the migration `call`, from `endpoint` (whose
/// identity is the caller's); `on_progress` sees each update as it comes. Returns how it
/// ended.
pub async fn migrate(
    endpoint: &Endpoint,
    addr: SocketAddr,
    node: &str,
    call: MigrateCall,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Answer, MigrateError> {
    let peer = endpoint.connect(addr, node).await?;
    let mut ch = open(&peer, SERVICE).await?;
    ch.send(&Request::Migrate(call)).await?;
    loop {
        match ch.recv::<Reply>().await? {
            Some(Reply::Progress(p)) => on_progress(&p),
            Some(Reply::Report { report, committed }) => {
                peer.close("done");
                let report = serde_json::to_value(&report)
                    .map_err(|e| MigrateError::Peer(format!("unreadable report: {e}")))?;
                return Ok(Answer::Report { report, committed });
            }
            Some(Reply::Refused { reason }) => return Ok(Answer::Refused(reason)),
            Some(Reply::Error { reason }) => return Ok(Answer::Error(reason)),
            Some(Reply::Staged { .. }) => {
                return Err(MigrateError::Peer(format!(
                    "{node} answered a migration as a pre-staging copy"
                )))
            }
            None => {
                return Err(MigrateError::Peer(format!(
                    "{node} closed the control stream before the report"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_operators_may_start_migrations_without_a_token() {
        for caller in [
            Principal::Node("n1".into()),
            Principal::Operator("alice".into()),
        ] {
            assert!(
                authorize(&caller, None, &no_coordinator()).is_ok(),
                "{caller}"
            );
            let refused = authorize(&caller, Some(7), &no_coordinator())
                .unwrap_err()
                .to_string();
            assert!(refused.contains("no coordinator"), "{refused}");
        }
    }

    #[test]
    fn only_the_leader_of_the_term_may_order_pre_staging() {
        let leader: Fencing = Arc::new(|caller, t| match caller {
            Principal::Node(n) if n == "n1" && t == 7 => Ok(()),
            _ => Err(format!("not the leader of term {t}")),
        });
        assert!(authorize_prestage(&Principal::Node("n1".into()), 7, &leader).is_ok());
        for (caller, t) in [
            (Principal::Node("n1".into()), 6),
            (Principal::Node("n2".into()), 7),
            // An operator, even one named as the leader, with the right term.
            (Principal::Operator("n1".into()), 7),
        ] {
            let e = authorize_prestage(&caller, t, &leader).unwrap_err();
            assert!(matches!(e, MigrateError::Refused(_)), "{caller} {t}: {e}");
        }
        let e = authorize_prestage(&Principal::Operator("alice".into()), 7, &leader)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the coordinator's leader"), "{e}");
        // Without a coordinator nobody may.
        assert!(authorize_prestage(&Principal::Node("n1".into()), 7, &no_coordinator()).is_err());
    }

    #[test]
    fn a_token_passes_only_the_check_it_is_given() {
        // The leader n1 in term 7, as a source would know it.
        let leader: Fencing = Arc::new(|caller, t| match caller {
            Principal::Node(n) if n == "n1" && t == 7 => Ok(()),
            _ => Err(format!("not the leader of term {t}")),
        });
        assert!(authorize(&Principal::Node("n1".into()), Some(7), &leader).is_ok());
        for (caller, t) in [
            (Principal::Node("n1".into()), 6),
            (Principal::Node("n2".into()), 7),
            (Principal::Operator("n1".into()), 7),
        ] {
            let e = authorize(&caller, Some(t), &leader).unwrap_err();
            assert!(matches!(e, MigrateError::Refused(_)), "{caller} {t}: {e}");
        }
    }
}
