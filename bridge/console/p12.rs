//! The admin identity as a PKCS#12 file (`.p12`), which browsers import to present it to the
//! console: the certificate and its private key, the key encrypted with PBES2 (PBKDF2-SHA256,
//! AES-256-CBC) and the file's integrity an HMAC-SHA256 — what current Chromium, Firefox, macOS
//! and Windows import. Written by pure Rust (no OpenSSL), readable by its owner only.

use std::path::{Path, PathBuf};

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};

/// The password of the development PKI's `.p12` files (development only: the certificates of a
/// real deployment come from its own CA, and are exported with a password of its choosing).
pub const DEV_P12_PASSWORD: &str = "qrbridge";

/// Why a `.p12` could not be written.
#[derive(Debug, thiserror::Error)]
pub enum P12Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("PKCS#12: {0}")]
    Encode(String),
}

/// The DER contents of the first PEM block labelled one of `labels` in the file at `path`.
fn pem_block(path: &Path, labels: &[&str]) -> Result<Vec<u8>, P12Error> {
    let text = std::fs::read(path).map_err(|source| P12Error::Io { path: path.into(), source })?;
    for pem in x509_parser::pem::Pem::iter_from_buffer(&text) {
        let pem = pem.map_err(|e| P12Error::Pem { path: path.into(), message: e.to_string() })?;
        if labels.contains(&pem.label.as_str()) {
            return Ok(pem.contents);
        }
    }
    Err(P12Error::Pem { path: path.into(), message: format!("no {} block", labels.join(" or ")) })
}

/// The certificate at `cert_pem` (PEM; further certificates in the file, if any, as its chain)
/// and the PKCS#8 private key at `key_pem`, as PKCS#12 bytes protected by `password`.
pub fn p12_bytes(cert_pem: &Path, key_pem: &Path, password: &str) -> Result<Vec<u8>, P12Error> {
    let text =
        std::fs::read(cert_pem).map_err(|source| P12Error::Io { path: cert_pem.into(), source })?;
    let mut certs = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&text) {
        let pem =
            pem.map_err(|e| P12Error::Pem { path: cert_pem.into(), message: e.to_string() })?;
        if pem.label == "CERTIFICATE" {
            certs.push(
                Certificate::from_der(&pem.contents)
                    .map_err(|e| P12Error::Encode(format!("{}: {e}", cert_pem.display())))?,
            );
        }
    }
    if certs.is_empty() {
        return Err(P12Error::Pem {
            path: cert_pem.into(),
            message: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKey::from_der(&pem_block(key_pem, &["PRIVATE KEY"])?)
        .map_err(|e| P12Error::Encode(format!("{}: {e}", key_pem.display())))?;
    // The local key id ties the key to its certificate: a digest of the certificate, as
    // OpenSSL and Java write it.
    let id = {
        use sha2::Digest;
        sha2::Sha256::digest(certs[0].as_der())[..20].to_vec()
    };
    let alias = certs[0].subject().to_owned();
    let mut store = KeyStore::new();
    store.add_entry(&alias, KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(id, key, certs)));
    store.writer(password).write().map_err(|e| P12Error::Encode(e.to_string()))
}

/// Writes the identity at `cert_pem` and `key_pem` as a PKCS#12 file at `out`, protected by
/// `password`, readable by its owner only (it holds the private key).
pub fn write_p12(
    cert_pem: &Path,
    key_pem: &Path,
    out: &Path,
    password: &str,
) -> Result<(), P12Error> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = p12_bytes(cert_pem, key_pem, password)?;
    let io = |source| P12Error::Io { path: out.into(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(out).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p12_keystore::Pkcs12ImportPolicy;

    #[test]
    fn the_admin_identity_reads_back_from_its_p12() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::new("test CA").unwrap();
        let issued = ca.issue("admin", crate::pki::Usage::Client, false).unwrap();
        crate::pki::write_issued(dir.path(), "admin", &issued).unwrap();
        let out = dir.path().join("admin.p12");
        write_p12(&dir.path().join("admin.crt"), &dir.path().join("admin.key"), &out, "pw")
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let bytes = std::fs::read(&out).unwrap();
        let back = KeyStore::from_pkcs12(&bytes, "pw", Pkcs12ImportPolicy::Strict).unwrap();
        let (_, chain) = back.private_key_chain().expect("a key and its certificate");
        let cert_der = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap().1;
        assert_eq!(chain.certs()[0].as_der(), cert_der.contents.as_slice());
        let key_der = x509_parser::pem::parse_x509_pem(issued.key_pem.as_bytes()).unwrap().1;
        assert_eq!(chain.key().as_der(), key_der.contents.as_slice());
        assert!(KeyStore::from_pkcs12(&bytes, "wrong", Pkcs12ImportPolicy::Strict).is_err());
        // Not a key: a clear error, nothing written.
        let bad = dir.path().join("bad.p12");
        let e = write_p12(&dir.path().join("admin.crt"), &dir.path().join("admin.crt"), &bad, "pw");
        assert!(matches!(e, Err(P12Error::Pem { .. })), "{e:?}");
        assert!(!bad.exists());
    }
}
