//! The development PKI: generated on first run under `<data-dir>/pki/` so the embedded default
//! runs with real mTLS and no setup. One CA issues the server certificate (naming `localhost` and
//! `127.0.0.1`), the partners' (`partner-demo`, `partner-other`), two admins' (`admin` and
//! `admin-2`: changes under dual control need a second admin to approve them), the bridge's own
//! client certificate and the sandbox acquirer's. All ECDSA P-256, all PEM. The CA's key is not
//! kept: a set made by an older build (without `admin-2`) is made again by removing the folder.
//!
//! Tests use [`Ca`] to issue more: a second "wrong" CA, expired certificates, unknown identities.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Why PKI material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("an identity for browsers: {0}")]
    P12(#[from] crate::console::p12::P12Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

/// A certificate authority that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// An issued certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "qrbridge development");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        Ok(Ca { issuer: Issuer::new(params, key), cert_pem: cert.pem() })
    }

    /// Issues a certificate for `name` (a DNS SAN, plus `127.0.0.1` for servers and a SPIFFE
    /// URI for clients). `expired` makes one whose validity ended in 2025.
    pub fn issue(&self, name: &str, usage: Usage, expired: bool) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        match usage {
            Usage::Server => {
                params.subject_alt_names.push(SanType::DnsName("localhost".try_into()?));
                params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Usage::Client => {
                let uri = format!("spiffe://qrbridge.dev/{name}");
                params.subject_alt_names.push(SanType::URI(uri.as_str().try_into()?));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2025, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The certificates the embedded default needs, by file stem, with their usage.
pub const DEV_CERTS: &[(&str, Usage)] = &[
    ("server", Usage::Server),
    ("partner-demo", Usage::Client),
    ("partner-other", Usage::Client),
    ("admin", Usage::Client),
    // The second admin identity, so that a proposal (dual control) can be approved.
    ("admin-2", Usage::Client),
    ("bridge-client", Usage::Client),
    ("acquirer-sandbox", Usage::Server),
];

/// Makes the development PKI under `dir` unless `dir/ca.crt` exists. Returns whether it made it.
///
/// Several daemons may start at once on one data folder (nodes on one database): each writes its
/// set into a folder of its own beside `dir` and renames it into place; the first rename wins,
/// and the others use the winner's set, so no node ever reads a mix of two sets.
pub fn ensure_dev_pki(dir: &Path) -> Result<bool, PkiError> {
    if dir.join("ca.crt").exists() {
        return Ok(false);
    }
    let ca = Ca::new("qrbridge development CA")?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("pki");
    let own = parent.join(format!(".{name}.{}.{:08x}", std::process::id(), fastrand::u32(..)));
    write_dev_pki(&own, &ca)?;
    write_dev_p12(&own)?;
    match std::fs::rename(&own, dir) {
        Ok(()) => {
            if let Ok(f) = std::fs::File::open(&parent) {
                let _ = f.sync_all();
            }
            Ok(true)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&own);
            if dir.join("ca.crt").exists() {
                // Another process put its set in place first.
                Ok(false)
            } else {
                // `dir` is there but holds no complete set (left by an older build): write
                // into it as before.
                tracing::debug!(error = %e, "development PKI written in place");
                write_dev_pki(dir, &ca)?;
                write_dev_p12(dir)?;
                Ok(true)
            }
        }
    }
}

/// Writes the development set issued by `ca` under `dir` (tests keep `ca` to issue more).
pub fn write_dev_pki(dir: &Path, ca: &Ca) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, usage) in DEV_CERTS {
        // The sandbox acquirer both serves (to the bridge) and calls the bridge (refunds).
        let issued = if *name == "acquirer-sandbox" {
            ca.issue_dual(name)?
        } else {
            ca.issue(name, *usage, false)?
        };
        write(&dir.join(format!("{name}.crt")), &issued.cert_pem)?;
        write_secret(&dir.join(format!("{name}.key")), &issued.key_pem)?;
    }
    // Written last: its presence says the set is complete.
    write(&dir.join("ca.crt"), &ca.cert_pem)
}

/// The admins' identities as PKCS#12 files for browsers (the console: docs/console.md),
/// `<dir>/admin.p12` and `admin-2.p12`, password [`crate::console::DEV_P12_PASSWORD`]. Only the
/// daemon's own development PKI gets them (tests that need one write it: PBKDF2 takes a while).
pub fn write_dev_p12(dir: &Path) -> Result<(), PkiError> {
    for name in ["admin", "admin-2"] {
        crate::console::write_p12(
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
            &dir.join(format!("{name}.p12")),
            crate::console::DEV_P12_PASSWORD,
        )?;
    }
    Ok(())
}

/// Writes one issued certificate and key as `<dir>/<name>.crt` and `.key`.
pub fn write_issued(dir: &Path, name: &str, issued: &Issued) -> Result<(), PkiError> {
    write(&dir.join(format!("{name}.crt")), &issued.cert_pem)?;
    write_secret(&dir.join(format!("{name}.key")), &issued.key_pem)
}

impl Ca {
    /// A certificate good for both server and client authentication.
    fn issue_dual(&self, name: &str) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(name.try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn write(path: &Path, text: &str) -> Result<(), PkiError> {
    std::fs::write(path, text).map_err(io(path))
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}
