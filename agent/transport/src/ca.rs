//! The cluster certificate authority: `godwit ca init` and `godwit cert issue`.
//!
//! One CA per cluster signs one certificate per node. A node's certificate names it with a
//! single DNS subject alternative name, [`node_dns_name`] (`<node>.node.godwit`), and is valid
//! for both TLS server and client authentication, since every agent is both. An operator's
//! certificate (`godwit cert issue --operator NAME`) names `<name>.operator.godwit` and is
//! valid for client authentication only: it can call an agent, never serve as one. Keys are
//! ECDSA P-256, written with mode 0600; an existing file is never overwritten, except by
//! [`renew_node`], which re-issues a node's certificate for its existing key and swaps the new
//! file in with one rename.
//!
//! A node's certificate is valid for [`DEFAULT_NODE_DAYS`] unless told otherwise. Its SHA-256
//! fingerprint ([`fingerprint`]) is what a deny list (`tls_dir/deny`) names.

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
/// Days a node certificate is valid unless told otherwise.
pub const DEFAULT_NODE_DAYS: u32 = 365;
/// Days an operator's certificate is valid.
const OPERATOR_DAYS: u32 = 365;

/// What was issued: the files, and when the certificate stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Where the certificate, its key and the CA's certificate are.
    pub files: IdentityFiles,
    /// Days the certificate is valid, from today.
    pub days: u32,
    /// Its last valid day, `YYYY-MM-DD` (UTC).
    pub not_after: String,
    /// Its SHA-256 fingerprint, lowercase hex (what `tls_dir/deny` names).
    pub fingerprint: String,
}

/// The SHA-256 fingerprint of a certificate (DER), lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
    let today = days_since_epoch();
    set_validity(&mut params, today - 1, today + 366 * i64::from(CA_YEARS));
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
    issue_node_for(ca_dir, node, out_dir, DEFAULT_NODE_DAYS).map(|i| i.files)
}

/// [`issue_node`], valid for `days` (at least 1) from today.
pub fn issue_node_for(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
    days: u32,
) -> Result<Issued, TransportError> {
    validate_node_name(node)?;
    let today = days_since_epoch();
    issue(
        ca_dir,
        node,
        &node_dns_name(node),
        NODE_USAGES,
        (today - 1, today + i64::from(days.max(1))),
        IdentityFiles::in_dir(out_dir, node),
        None,
    )
    .map(|(files, fingerprint)| Issued {
        files,
        days: days.max(1),
        not_after: ymd_string(today + i64::from(days.max(1))),
        fingerprint,
    })
}

/// Re-issues `node`'s certificate in `dir` (`<node>.pem`) from the CA in `ca_dir`, for the key
/// it already has (`<node>.key`), valid for `days` from today. The new certificate replaces the
/// old with one rename, so a reader sees one or the other, never a mix; the running agent takes
/// it at its next start. `dir` must hold the same CA's `ca.pem`.
pub fn renew_node(
    ca_dir: &Path,
    node: &str,
    dir: &Path,
    days: u32,
) -> Result<Issued, TransportError> {
    validate_node_name(node)?;
    let files = IdentityFiles::in_dir(dir, node);
    let key = KeyPair::from_pem(&read(&files.key)?).map_err(TransportError::cert)?;
    if !files.cert.exists() {
        return Err(TransportError::Cert(format!(
            "{}: no certificate to renew (issue one with `godwit cert issue`)",
            files.cert.display()
        )));
    }
    let today = days_since_epoch();
    issue(
        ca_dir,
        node,
        &node_dns_name(node),
        NODE_USAGES,
        (today - 1, today + i64::from(days.max(1))),
        files,
        Some(key),
    )
    .map(|(files, fingerprint)| Issued {
        files,
        days: days.max(1),
        not_after: ymd_string(today + i64::from(days.max(1))),
        fingerprint,
    })
}

/// Every agent is client and server.
const NODE_USAGES: &[ExtendedKeyUsagePurpose] = &[
    ExtendedKeyUsagePurpose::ServerAuth,
    ExtendedKeyUsagePurpose::ClientAuth,
];

/// A node certificate valid from `from` to `until` (days since the Unix epoch), which may lie
/// in the past: to test that peers refuse an expired certificate.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn issue_node_between(
    ca_dir: &Path,
    node: &str,
    out_dir: &Path,
    from: i64,
    until: i64,
) -> Result<IdentityFiles, TransportError> {
    issue(
        ca_dir,
        node,
        &node_dns_name(node),
        NODE_USAGES,
        (from, until),
        IdentityFiles::in_dir(out_dir, node),
        None,
    )
    .map(|(files, _)| files)
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
    let today = days_since_epoch();
    issue(
        ca_dir,
        name,
        &operator_dns_name(name),
        &[ExtendedKeyUsagePurpose::ClientAuth],
        (today - 1, today + i64::from(OPERATOR_DAYS)),
        IdentityFiles::operator_in_dir(out_dir, name),
        None,
    )
    .map(|(files, _)| files)
}

/// Issues one certificate with the common name `cn` and the single DNS name `dns` into `files`,
/// valid over `days` (from, until: days since the Unix epoch), and returns its fingerprint.
/// With `renew_key`, the certificate is for that existing key and replaces `files.cert`;
/// without, a new key is made and no file is overwritten.
fn issue(
    ca_dir: &Path,
    cn: &str,
    dns: &str,
    usages: &[ExtendedKeyUsagePurpose],
    days: (i64, i64),
    files: IdentityFiles,
    renew_key: Option<KeyPair>,
) -> Result<(IdentityFiles, String), TransportError> {
    let ca_pem = read(&ca_dir.join(CA_CERT))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join(CA_KEY))?).map_err(TransportError::cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(TransportError::cert)?;
    let renewing = renew_key.is_some();
    let key = match renew_key {
        Some(key) => key,
        None => KeyPair::generate().map_err(TransportError::cert)?,
    };
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
    set_validity(&mut params, days.0, days.1);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TransportError::cert)?;
    let fingerprint = fingerprint(cert.der());
    if renewing {
        match std::fs::read(&files.ca) {
            Ok(existing) if existing == ca_pem.as_bytes() => {}
            _ => {
                return Err(TransportError::Cert(format!(
                    "{} is not the certificate of the CA in {}: renew from the CA that \
                     issued this node's certificate",
                    files.ca.display(),
                    ca_dir.display()
                )))
            }
        }
        replace(&files.cert, cert.pem().as_bytes(), 0o644)?;
        return Ok((files, fingerprint));
    }
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
    Ok((files, fingerprint))
}

/// Today, in days since the Unix epoch (UTC).
pub fn days_since_epoch() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 86_400) as i64
}

/// The civil date of a day since the Unix epoch (H. Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Valid from the day `from` to the day `until` (days since the Unix epoch).
fn set_validity(params: &mut CertificateParams, from: i64, until: i64) {
    let (y, m, d) = civil(from);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(until);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

fn ymd_string(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes `data` to a new file beside `path`, syncs it, and renames it over `path`.
fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), TransportError> {
    let tmp = path.with_extension("pem.new");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, data, mode)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| TransportError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TransportError::io(path, e))
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
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(ymd_string(20_454), "2026-01-01");
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
