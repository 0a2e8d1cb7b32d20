//! TLS 1.3 with mutual authentication: a node's identity and the rustls configurations.
//!
//! Both sides present a certificate of the cluster CA and nothing else is trusted: the CA is
//! the only root. The client checks the server's name against the node it meant to reach
//! (rustls does, with the name [`node_dns_name`]); the server learns who the client claims to
//! be from its first frame and checks that claim against the client's certificate
//! ([`verify_peer_name`]). The crypto provider is ring, set explicitly.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::ca::{node_dns_name, validate_node_name, IdentityFiles};
use super::error::TransportError;

/// ALPN protocol of agent-to-agent connections.
pub const ALPN: &[u8] = b"godwit/1";

/// A node's certificate and key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct Identity {
    node: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            node: self.node.clone(),
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
        let identity = Identity::read(node, files)?;
        // Our own certificate must pass the checks peers will make.
        identity
            .verify_peer(node, &identity.chain)
            .map_err(|e| TransportError::Cert(format!("{}: {e}", files.cert.display())))?;
        Ok(identity)
    }

    /// Loads files that do not match (another CA, another name), to test that peers refuse
    /// them.
    #[cfg(test)]
    pub(crate) fn load_unchecked_for_tests(node: &str, files: &IdentityFiles) -> Identity {
        Identity::read(node, files).unwrap()
    }

    fn read(node: &str, files: &IdentityFiles) -> Result<Identity, TransportError> {
        validate_node_name(node)?;
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
            node: node.to_string(),
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The node this identity names.
    pub fn node(&self) -> &str {
        &self.node
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
        validate_node_name(node)?;
        let (end, intermediates) = chain
            .split_first()
            .ok_or_else(|| TransportError::Refused("no client certificate".into()))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let name = ServerName::try_from(node_dns_name(node))
            .map_err(|e| TransportError::Refused(e.to_string()))?;
        // The server-certificate check is the same chain and name check a client certificate
        // needs; our node certificates carry both usages.
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            end,
            intermediates,
            &name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| TransportError::Refused(format!("certificate for {node}: {e}")))
    }
}
