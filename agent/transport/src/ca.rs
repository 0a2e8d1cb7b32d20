//! The cluster certificate authority: `godwit ca init` and `godwit cert issue`.
//!
//! One CA per cluster signs one certificate per node. A node's certificate names it with a
//! single DNS subject alternative name, [`node_dns_name`] (`<node>.node.godwit`), and is valid
//! for both TLS server and client authentication, since every agent is both. An operator's
//! certificate (`godwit cert issue --operator NAME`) names `<name>.operator.godwit` and is
//! valid for client authentication only: it can call an agent, never serve as one. Keys are
//! ECDSA P-256, written with mode 0600; an existing file is never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::error::TransportError;

/// File name of the CA certificate, in the CA directory and next to node certificates.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key (only in the CA directory).
pub(crate) const CA_KEY: &str = "ca.key";
/// Years a CA certificate is valid.
const CA_YEARS: i32 = 10;
/// Years a node certificate is valid.
const NODE_YEARS: i32 = 2;
/// Years an operator's certificate is valid.
const OPERATOR_YEARS: i32 = 1;

/// The DNS name a node's certificate carries, and that peers verify.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}.node.godwit")
}

/// The DNS name an operator's certificate carries (`<name>.operator.godwit`): a name no node
/// certificate can carry, so an operator is never taken for a node nor the reverse.
pub fn operator_dns_name(name: &str) -> String {
    format!("{name}.operator.godwit")
}

/// Checks that `node` can be a DNS label: 1 to 63 of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`.
pub fn validate_node_name(node: &str) -> Result<(), TransportError> {
    let ok = !node.is_empty()
        && node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !node.starts_with('-')
        && !node.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TransportError::InvalidNodeName(node.to_string()))
    }
}

/// The files of one node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

impl IdentityFiles {
    /// The usual layout of a directory written by [`issue_node`]: `ca.pem`, `<node>.pem`,
    /// `<node>.key`.
    pub fn in_dir(dir: &Path, node: &str) -> IdentityFiles {
        IdentityFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        }
    }

    /// The layout of a directory written by [`issue_operator`]: `ca.pem`,
    /// `<name>.operator.pem`, `<name>.operator.key` (never a node's file names).
    pub fn operator_in_dir(dir: &Path, name: &str) -> IdentityFiles {
        IdentityFiles {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{name}.operator.pem")),
            key: dir.join(format!("{name}.operator.key")),
        }
    }
}

/// Creates a new cluster CA in `dir` (`ca.pem`, `ca.key`); refuses to overwrite one.
pub fn init_ca(dir: &Path, cluster: &str) -> Result<PathBuf, TransportError> {
    std::fs::create_dir_all(dir).map_err(|e| TransportError::io(dir, e))?;
    let key = KeyPair::generate().map_err(TransportError::cert)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("godwit cluster CA {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_YEARS);
    let cert = params.self_signed(&key).map_err(TransportError::cert)?;
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(dir.join(CA_CERT))
}

/// Issues a certificate for `node`, signed by the CA in `ca_dir`, into `out_dir`
/// (`ca.pem`, `<node>.pem`, `<node>.key`); refuses to overwrite a node's files.
pub fn issue_node(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
) -> Result<IdentityFiles, TransportError> {
    validate_node_name(node)?;
    issue(
        ca_dir,
        node,
        &node_dns_name(node),
        // Every agent is client and server.
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        NODE_YEARS,
        IdentityFiles::in_dir(out_dir, node),
    )
}

/// Issues an operator's certificate for `name`, signed by the CA in `ca_dir`, into `out_dir`
/// (`ca.pem`, `<name>.operator.pem`, `<name>.operator.key`): client authentication only, with
/// the name [`operator_dns_name`]. An operator can call an agent (`godwit migrate`) but never
/// serve as one. Refuses to overwrite files.
pub fn issue_operator(
    ca_dir: &Path,
    name: &str,
    out_dir: &Path,
) -> Result<IdentityFiles, TransportError> {
    validate_node_name(name)?;
    issue(
        ca_dir,
        name,
        &operator_dns_name(name),
        &[ExtendedKeyUsagePurpose::ClientAuth],
        OPERATOR_YEARS,
        IdentityFiles::operator_in_dir(out_dir, name),
    )
}

/// Issues one certificate with the common name `cn` and the single DNS name `dns` into `files`.
fn issue(
    ca_dir: &Path,
    cn: &str,
    dns: &str,
    usages: &[ExtendedKeyUsagePurpose],
    years: i32,
    files: IdentityFiles,
) -> Result<IdentityFiles, TransportError> {
    let ca_pem = read(&ca_dir.join(CA_CERT))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?).map_err(TransportError::cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(TransportError::cert)?;
    let key = KeyPair::generate().map_err(TransportError::cert)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(
        dns.to_string().try_into().map_err(TransportError::cert)?,
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, years);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TransportError::cert)?;
    if let Some(out_dir) = files.cert.parent() {
        std::fs::create_dir_all(out_dir).map_err(|e| TransportError::io(out_dir, e))?;
    }
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    if files.ca != ca_dir.join(CA_CERT) {
        match std::fs::read(&files.ca) {
            Ok(existing) if existing == ca_pem.as_bytes() => {}
            Ok(_) => return Err(TransportError::Exists(files.ca)),
            Err(_) => write_new(&files.ca, ca_pem.as_bytes(), 0o644)?,
        }
    }
    Ok(files)
}

/// Valid from the start of the current year for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Within a day of the truth, which is all a start-of-year needs.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 12, 31);
}

fn read(path: &Path) -> Result<String, TransportError> {
    std::fs::read_to_string(path).map_err(|e| TransportError::io(path, e))
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), TransportError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TransportError::Exists(path.to_path_buf())
            } else {
                TransportError::io(path, e)
            }
        })?;
    f.write_all(data).map_err(|e| TransportError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels() {
        for ok in ["n1", "edge-7", "a"] {
            assert!(validate_node_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "N1", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_and_issue_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "test").unwrap();
        assert!(matches!(
            init_ca(&ca, "test"),
            Err(TransportError::Exists(_))
        ));
        let mode = std::fs::metadata(ca.join(CA_KEY)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let out = dir.path().join("n1");
        let files = issue_node(&ca, "n1", &out).unwrap();
        assert!(files.cert.exists() && files.key.exists() && files.ca.exists());
        assert!(matches!(
            issue_node(&ca, "n1", &out),
            Err(TransportError::Exists(_))
        ));
        assert!(matches!(
            issue_node(&ca, "Bad_Name", &out),
            Err(TransportError::InvalidNodeName(_))
        ));
    }
}
