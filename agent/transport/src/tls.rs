//! TLS 1.3 with mutual authentication: a node's identity and the rustls configurations.
//!
//! Both sides present a certificate of the cluster CA and nothing else is trusted: the CA is
//! the only root. The client checks the server's name against the node it meant to reach
//! (rustls does, with the name [`node_dns_name`]); the server learns who the client claims to
//! be from its first frame, a node or an operator ([`Principal`]), and checks that claim
//! against the client's certificate ([`Identity::verify_principal`]). The crypto provider is
//! ring, set explicitly.
//!
//! Both sides also refuse a peer whose certificate is on the deny list, `deny` beside
//! `ca.pem` (one SHA-256 fingerprint, hex, a line; `#` comments; colons allowed), checked at
//! every handshake by a verifier wrapping webpki's. The file is read again whenever its
//! modification time or size changes, so a revocation takes effect without a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use super::ca::{fingerprint, node_dns_name, operator_dns_name, validate_node_name, IdentityFiles};
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

/// File name of the deny list, beside `ca.pem`.
pub const DENY_FILE: &str = "deny";

/// Certificates refused at every handshake, by SHA-256 fingerprint: the file `deny`, read again
/// when it changes.
#[derive(Debug)]
pub(crate) struct DenyList {
    path: PathBuf,
    /// The file's (mtime, size) when last read, and the fingerprints it held.
    seen: Mutex<(Option<FileStamp>, HashSet<String>)>,
}

/// A file's modification time and size: when either changes, it is read again.
type FileStamp = (SystemTime, u64);

impl DenyList {
    /// Refuses a listed certificate (of the peer in role `side`) as revoked, and says so.
    fn check(&self, cert: &CertificateDer<'_>, side: &str) -> Result<(), rustls::Error> {
        if self.denies(cert) {
            tracing::warn!(fingerprint = %fingerprint(cert), side, "refused a denied certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(())
    }

    fn new(path: PathBuf) -> DenyList {
        DenyList {
            path,
            seen: Mutex::default(),
        }
    }

    /// Whether `der` is denied, reading the file again if it changed. A missing file denies
    /// nothing; a line that is not a fingerprint is skipped and logged.
    pub(crate) fn denies(&self, der: &[u8]) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if stamp != seen.0 {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            let mut set = HashSet::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let hex: String = line
                    .chars()
                    .filter(|c| *c != ':')
                    .collect::<String>()
                    .to_ascii_lowercase();
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    set.insert(hex);
                } else {
                    tracing::warn!(
                        file = %self.path.display(),
                        line = i + 1,
                        "deny list: not a SHA-256 fingerprint (64 hex digits), line skipped"
                    );
                }
            }
            if stamp.is_some() {
                tracing::info!(file = %self.path.display(), denied = set.len(), "deny list read");
            }
            *seen = (stamp, set);
        }
        !seen.1.is_empty() && seen.1.contains(&fingerprint(der))
    }
}

/// webpki's client verifier, and then the deny list.
#[derive(Debug)]
struct DenyingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny: Arc<DenyList>,
}

impl ClientCertVerifier for DenyingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.deny.check(end_entity, "client")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki's server verifier, and then the deny list.
#[derive(Debug)]
struct DenyingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    deny: Arc<DenyList>,
}

impl ServerCertVerifier for DenyingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.deny.check(end_entity, "server")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A node's (or an operator's) certificate and key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct Identity {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    deny: Arc<DenyList>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            principal: self.principal.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            deny: self.deny.clone(),
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
        let deny = files.ca.parent().unwrap_or(Path::new(".")).join(DENY_FILE);
        Ok(Identity {
            principal,
            chain,
            key,
            roots: Arc::new(roots),
            deny: Arc::new(DenyList::new(deny)),
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
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let verifier = Arc::new(DenyingClientVerifier {
            inner,
            deny: self.deny.clone(),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No resumption: a resumed session skips the certificate checks, and the deny list
        // must see every handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// Client side: TLS 1.3 only, servers of the cluster CA only, our certificate presented.
    pub fn client_config(&self) -> Result<ClientConfig, TransportError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let verifier = Arc::new(DenyingServerVerifier {
            inner,
            deny: self.deny.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
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
            .map_err(|e| refused(&e))?;
        if self.deny.denies(end) {
            return Err(refused(&"the certificate is on the deny list"));
        }
        Ok(())
    }
}
