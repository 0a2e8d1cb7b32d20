//! Test support: a cluster CA, a foreign CA and endpoints on loopback (unit tests only).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{init_ca, issue_node, Endpoint, Identity, Services};

/// Two CAs in a temporary directory.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The cluster CA.
    pub ca: PathBuf,
    /// Another CA.
    pub other_ca: PathBuf,
    /// Where node files go.
    pub root: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let other_ca = dir.path().join("other-ca");
    init_ca(&ca, "test").unwrap();
    init_ca(&other_ca, "test").unwrap();
    let root = dir.path().to_path_buf();
    Pki {
        _dir: dir,
        ca,
        other_ca,
        root,
    }
}

/// An identity for `node` signed by the CA in `ca_dir`.
pub fn identity(ca_dir: &Path, node: &str, out: &Path) -> Identity {
    let files = issue_node(ca_dir, node, out).unwrap();
    Identity::load(node, &files).unwrap()
}

/// An endpoint on a free loopback port.
pub fn bind(id: Identity) -> Endpoint {
    Endpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), id).unwrap()
}

/// An endpoint of the cluster CA for `node`.
pub fn node(p: &Pki, node: &str) -> Endpoint {
    bind(identity(&p.ca, node, &p.root.join(node)))
}

/// Accepts peers on `endpoint` and serves `services` to each, until aborted.
pub fn serve(endpoint: &Endpoint, services: Services) -> tokio::task::JoinHandle<()> {
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        while let Some(peer) = endpoint.accept().await {
            tokio::spawn(services.clone().serve(peer));
        }
    })
}
