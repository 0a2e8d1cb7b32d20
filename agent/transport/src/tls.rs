//! TLS 1.3 with mutual authentication: a node's identity and the rustls configurations.
//!
//! Both sides present a certificate of the cluster CA and nothing else is trusted: the CA is
//! the only root. The client checks the server's name against the node it meant to reach
//! (rustls does, with the name [`node_dns_name`]); the server learns who the client claims to
//! be from its first frame, a node or an operator ([`Principal`]), and checks that claim
//! against the client's certificate ([`Identity::verify_principal`]). The crypto provider is
//! ring, set explicitly.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ca::{node_dns_name, operator_dns_name, validate_node_name, IdentityFiles};
use super::error::TransportError;

/// ALPN protocol of agent-to-agent connections.
pub const ALPN: &[u8] = b"godwit/1";

/// Who is on one end of a connection, as its certificate proves: a node (an agent, later the
/// coordinator) or an operator (`godwit cert issue --operator`, used by `godwit migrate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    /// A node of the cluster: `<name>.node.godwit`.
    Node(String),
    /// A person or tool: `<name>.operator.godwit`. A client only, and only of the services
    /// registered for operators.
    Operator(String),
}

impl Principal {
    /// The name without its kind.
    pub fn name(&self) -> &str {
        match self {
            Principal::Node(n) | Principal::Operator(n) => n,
        }
    }

    /// The DNS name its certificate must carry.
    pub fn dns_name(&self) -> String {
        match self {
            Principal::Node(n) => node_dns_name(n),
            Principal::Operator(n) => operator_dns_name(n),
        }
    }
}

impl std::fmt::Display for Principal {
    /// `node n1`, `operator alice`: how the audit log names a caller.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Node(n) => write!(f, "node {n}"),
            Principal::Operator(n) => write!(f, "operator {n}"),
        }
    }
}

/// A node's (or an operator's) certificate and key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct Identity {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            principal: self.principal.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    /// Loads `files` for node `node`, and checks that the certificate names that node and is
    /// signed by the CA.
    pub fn load(node: &str, files: &IdentityFiles) -> Result<Identity, TransportError> {
        Identity::load_as(Principal::Node(node.to_string()), files)
    }

    /// Loads an operator's `files` (see [`super::issue_operator`]), checked as
    /// [`Identity::load`] checks a node's.
    pub fn load_operator(name: &str, files: &IdentityFiles) -> Result<Identity, TransportError> {
        Identity::load_as(Principal::Operator(name.to_string()), files)
    }

    fn load_as(principal: Principal, files: &IdentityFiles) -> Result<Identity, TransportError> {
        let identity = Identity::read(principal, files)?;
        // Our own certificate must pass the checks peers will make.
        identity
            .verify_principal(&identity.principal, &identity.chain)
            .map_err(|e| TransportError::Cert(format!("{}: {e}", files.cert.display())))?;
        Ok(identity)
    }

    /// Loads files that do not match (another CA, another name), to test that peers refuse
    /// them.
    #[cfg(test)]
    pub(crate) fn load_unchecked_for_tests(node: &str, files: &IdentityFiles) -> Identity {
        Identity::read(Principal::Node(node.to_string()), files).unwrap()
    }

    fn read(principal: Principal, files: &IdentityFiles) -> Result<Identity, TransportError> {
        validate_node_name(principal.name())?;
        let pem_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| {
                TransportError::Cert(format!("{}: {e}", path.display()))
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(pem_err(&files.cert))?
            .collect::<Result<_, _>>()
            .map_err(pem_err(&files.cert))?;
        if chain.is_empty() {
            return Err(TransportError::Cert(format!(
                "{}: no certificate",
                files.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem_err(&files.key))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&files.ca).map_err(pem_err(&files.ca))? {
            roots
                .add(ca.map_err(pem_err(&files.ca))?)
                .map_err(|e| TransportError::Cert(format!("{}: {e}", files.ca.display())))?;
        }
        if roots.is_empty() {
            return Err(TransportError::Cert(format!(
                "{}: no CA certificate",
                files.ca.display()
            )));
        }
        Ok(Identity {
            principal,
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The name this identity carries (a node's, or an operator's).
    pub fn node(&self) -> &str {
        self.principal.name()
    }

    /// Who this identity is.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Server side: TLS 1.3 only, client certificates of the cluster CA required.
    pub fn server_config(&self) -> Result<ServerConfig, TransportError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Client side: TLS 1.3 only, servers of the cluster CA only, our certificate presented.
    pub fn client_config(&self) -> Result<ClientConfig, TransportError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Checks that `chain` (a peer's certificates, end entity first) is signed by the cluster CA
    /// and names `node`.
    pub fn verify_peer(
        &self,
        node: &str,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), TransportError> {
        self.verify_principal(&Principal::Node(node.to_string()), chain)
    }

    /// Checks that `chain` (a client's certificates, end entity first) is signed by the cluster
    /// CA, valid now for client authentication, and carries `principal`'s DNS name
    /// (`<name>.node.godwit` or `<name>.operator.godwit`).
    pub fn verify_principal(
        &self,
        principal: &Principal,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), TransportError> {
        validate_node_name(principal.name())?;
        let (end, intermediates) = chain
            .split_first()
            .ok_or_else(|| TransportError::Refused("no client certificate".into()))?;
        let refused = |e: &dyn std::fmt::Display| {
            TransportError::Refused(format!("certificate for {principal}: {e}"))
        };
        let cert = webpki::EndEntityCert::try_from(end).map_err(|e| refused(&e))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.roots.roots,
            intermediates,
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| refused(&e))?;
        let name = ServerName::try_from(principal.dns_name()).map_err(|e| refused(&e))?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|e| refused(&e))
    }
}
