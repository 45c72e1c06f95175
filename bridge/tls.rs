//! mTLS: loading PEM material, the listeners' rustls configurations, and turning a verified client
//! certificate into a partner (or admin, or acquirer) identity.
//!
//! A listener's server configuration is made from files ([`ServerTlsFiles`]): the certificate, the
//! CAs whose clients it accepts and the CAs' revocation lists. [`ReloadableTls`] makes it again on
//! reload and hands it to the accept loop, so new certificates and CRLs apply to the next
//! handshake; the listeners' maximum connection age brings them to connections already open.
//! The CertificateRequest names no CA (a scanner learns nothing of who our partners are), only
//! TLS 1.3 is spoken unless 1.2 is allowed, and sessions are not resumed, so every connection's
//! certificate is checked (expiry, revocation) by a full handshake.
//!
//! A CRL past its nextUpdate is still used (its revocations still hold) and not enforced: rustls's
//! `enforce_revocation_expiration` would refuse every certificate of that CA until someone
//! installs a fresh CRL, turning a late download into a partner's outage. Each one is logged as a
//! warning, with its file and nextUpdate, whenever the files are read (at start and on reload);
//! keeping CRLs fresh is the operator's job (fetch them on a schedule, then SIGHUP).
//!
//! The handshake accepts a client certificate from any configured CA of that listener; then
//! [`Directory::resolve`] finds the party whose configured identity (SAN URI, SAN DNS name or
//! SHA-256 fingerprint) the certificate carries and checks the certificate again against that
//! party's own CA, so one partner's CA can never vouch for another partner's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qrbridge_adapters::https::ServerTls;
use qrbridge_config::Identity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), message: e.to_string() })
}

/// A root store of the certificates in `paths`.
pub fn roots(paths: &[&Path]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for p in paths {
        for c in load_certs(p)? {
            store.add(c)?;
        }
    }
    Ok(Arc::new(store))
}

/// Every CRL in a PEM file (`-----BEGIN X509 CRL-----`).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem_err = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if crls.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no X509 CRL found".into(),
        });
    }
    Ok(crls)
}

/// A server configuration requiring a client certificate from `client_roots`. TLS 1.3 always,
/// 1.2 when allowed; ALPN h2 and http/1.1. The provider is rustls's default (aws-lc-rs), whose
/// key exchange prefers the post-quantum hybrid X25519MLKEM768.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_roots: Arc<RootCertStore>,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with_crls(cert, key, client_roots, Vec::new(), allow_tls12)
}

/// [`server_config`], refusing client certificates that `crls` revoke. A certificate whose CA has
/// no CRL here is not checked for revocation (CRLs are given per CA, where the CA publishes one).
pub fn server_config_with_crls(
    cert: &Path,
    key: &Path,
    client_roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder(client_roots)
        // The CertificateRequest would otherwise list every trusted CA's name to anyone.
        .clear_root_hint_subjects()
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .build()?;
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_protocol_versions(versions)
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // A resumed session skips the client certificate check: no resumption, so an expired or
    // revoked certificate cannot come back on an old session.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The files a listener's TLS configuration is made from.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CAs whose client certificates the handshake accepts.
    pub client_cas: Vec<PathBuf>,
    /// Revocation lists (PEM), each applying to the certificates of the CA that signed it.
    pub crls: Vec<PathBuf>,
    pub allow_tls12: bool,
}

impl ServerTlsFiles {
    /// Reads every file and makes the configuration. A CRL past its nextUpdate is used, with a
    /// warning (see the module docs).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cas: Vec<&Path> = self.client_cas.iter().map(PathBuf::as_path).collect();
        let crls = read_crls(&self.crls)?;
        server_config_with_crls(&self.cert, &self.key, roots(&cas)?, crls, self.allow_tls12)
    }
}

/// Every CRL in `paths`; one past its nextUpdate is kept, with a warning (see the module docs).
pub fn read_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    let now = UnixTime::now();
    for path in paths {
        let read = load_crls(path)?;
        for stale in stale_crls(path, &read, now) {
            tracing::warn!(
                crl = %stale.path.display(),
                next_update = %stale.next_update,
                "CRL past its nextUpdate: still used, but revocations since are unknown; \
                 install its CA's current CRL and reload"
            );
        }
        crls.extend(read);
    }
    Ok(crls)
}

/// A CRL whose nextUpdate has passed: its CA has published a newer one that we do not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCrl {
    pub path: PathBuf,
    /// The CRL's nextUpdate (RFC 2822 where it can be written so).
    pub next_update: String,
}

/// The CRLs among `crls` (read from `path`) whose nextUpdate is before `now`. A CRL with no
/// nextUpdate, or one that does not parse (the verifier refuses those), is not listed.
pub fn stale_crls(
    path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
    now: UnixTime,
) -> Vec<StaleCrl> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    crls.iter()
        .filter_map(|der| {
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).ok()?;
            let next = crl.next_update()?;
            (next.timestamp() < now).then(|| StaleCrl {
                path: path.to_path_buf(),
                next_update: next.to_rfc2822().unwrap_or_else(|_| next.to_string()),
            })
        })
        .collect()
}

/// A listener's TLS configuration that can be made again from its files: [`Self::reload`] swaps
/// it in for the next handshake, or leaves the current one when a file is bad; a reload of the
/// whole configuration makes one from new files first ([`ServerTlsFiles::load`]) and puts it in
/// force with the rest ([`Self::put`]).
#[derive(Debug)]
pub struct ReloadableTls {
    files: std::sync::Mutex<ServerTlsFiles>,
    current: tokio::sync::watch::Sender<Arc<ServerConfig>>,
}

impl ReloadableTls {
    pub fn new(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let config = files.load()?;
        Ok(ReloadableTls {
            files: std::sync::Mutex::new(files),
            current: tokio::sync::watch::channel(config).0,
        })
    }

    /// One whose current configuration, made from `files`, is `config`.
    pub fn with(files: ServerTlsFiles, config: Arc<ServerConfig>) -> Self {
        ReloadableTls {
            files: std::sync::Mutex::new(files),
            current: tokio::sync::watch::channel(config).0,
        }
    }

    /// What the accept loop reads the configuration from.
    pub fn source(&self) -> ServerTls {
        self.current.subscribe().into()
    }

    /// Reads the files again; the next handshake uses them. On an error nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.put(files.clone(), files.load()?);
        Ok(())
    }

    /// Puts `config`, made from `files`, in force for the next handshake; later reloads read
    /// `files`.
    pub fn put(&self, files: ServerTlsFiles, config: Arc<ServerConfig>) {
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
        self.current.send_replace(config);
    }
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone)]
pub struct PeerCert {
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256: String,
    pub chain: Vec<CertificateDer<'static>>,
}

impl PeerCert {
    /// From the chain the client presented (end entity first); `None` when it does not parse.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let end = chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(end.as_ref()).ok()?;
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        dns.push(d.to_ascii_lowercase())
                    }
                    x509_parser::extensions::GeneralName::URI(u) => uris.push(u.to_string()),
                    _ => {}
                }
            }
        }
        Some(PeerCert {
            dns,
            uris,
            sha256: hex::encode(Sha256::digest(end.as_ref())),
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
        })
    }

    fn matches(&self, id: &Identity) -> bool {
        match id {
            Identity::SanUri(u) => self.uris.iter().any(|x| x == u),
            Identity::SanDns(d) => self.dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
            Identity::Sha256(h) => {
                let clean: String = h.chars().filter(|c| *c != ':').collect();
                clean.eq_ignore_ascii_case(&self.sha256)
            }
        }
    }
}

/// The parties one listener knows: an id, the identity its certificate carries, and a verifier
/// holding only its own CA.
#[derive(Clone)]
pub struct Directory {
    entries: Vec<(String, Identity, Arc<dyn ClientCertVerifier>)>,
    /// Unique to this directory (in this process): what a connection resolved with another one
    /// is resolved again.
    generation: u64,
}

impl Default for Directory {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Directory {
            entries: Vec::new(),
            generation: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(id, _, _)| id)).finish()
    }
}

impl Directory {
    /// Adds a party whose certificates `ca` issues, none of them revoked by `crls`.
    pub fn add(
        &mut self,
        id: &str,
        identity: Identity,
        ca: &Path,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<(), TlsError> {
        // The handshake checked revocation with the CRLs in force then; this check binds the
        // name to its own CA, and with the CRLs in force now, so a certificate revoked by a
        // reload is refused on a connection opened before it too.
        let verifier = WebPkiClientVerifier::builder(roots(&[ca])?)
            .with_crls(crls.iter().cloned())
            .allow_unknown_revocation_status()
            .build()?;
        self.entries.push((id.to_owned(), identity, verifier));
        Ok(())
    }

    /// Which directory this is ([`Directory::default`] makes a new one each time).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The ids of every party, in the order they were added.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(id, _, _)| id.as_str())
    }

    /// The id of the party `peer` is, or `None`.
    pub fn resolve(&self, peer: &PeerCert) -> Option<&str> {
        let (end, intermediates) = peer.chain.split_first()?;
        self.entries.iter().find_map(|(id, identity, verifier)| {
            (peer.matches(identity)
                && verifier.verify_client_cert(end, intermediates, UnixTime::now()).is_ok())
            .then_some(id.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CRL of a fresh CA with the given nextUpdate (year, month, day).
    fn crl(next: (i32, u8, u8)) -> CertificateRevocationListDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let issuer = rcgen::Issuer::new(params, key);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(next.0, next.1, next.2),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        crl.der().clone()
    }

    #[test]
    fn a_crl_past_its_next_update_is_reported_with_its_file_and_date() {
        let path = Path::new("/etc/qrbridge/partner.crl");
        let (old, fresh) = (crl((2025, 2, 1)), crl((2035, 1, 1)));
        // 2030-01-01T00:00:00Z.
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_893_456_000));
        let stale = stale_crls(path, &[old, fresh.clone()], now);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].path, path);
        assert!(stale[0].next_update.contains("2025"), "{stale:?}");
        assert!(stale_crls(path, &[fresh], now).is_empty());
    }
}
