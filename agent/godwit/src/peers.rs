//! Where peers are: the transport address each node publishes in the mesh, which migrations
//! resolve a target's name through (the migrate crate cannot reach gossip).

use std::net::SocketAddr;

/// The transport address `node` publishes in the mesh.
pub fn transport_addr(
    mesh: Option<&crate::gossip::Cluster>,
    node: &str,
) -> Result<SocketAddr, crate::migrate::MigrateError> {
    let Some(mesh) = mesh else {
        return Err(crate::migrate::MigrateError::NoRoute(
            "gossip is disabled: peers' addresses are unknown".into(),
        ));
    };
    let view = mesh.view();
    let Some(member) = view.member(node) else {
        return Err(crate::migrate::MigrateError::NoRoute(format!(
            "{node} is not a member of the mesh"
        )));
    };
    member
        .summary
        .as_ref()
        .and_then(|s| s.addresses.quic)
        .ok_or_else(|| {
            crate::migrate::MigrateError::NoRoute(format!(
                "{node} publishes no transport address (no certificate there?)"
            ))
        })
}
