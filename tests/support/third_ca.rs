//! A partner CA the test holds: certificates with chosen serials, and CRLs.

use std::path::Path;

/// A CA of a third partner, made by the test so it can issue certificates with chosen serials and
/// sign CRLs.
pub struct ThirdCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl ThirdCa {
    pub fn new() -> Self {
        Self::named("third partner CA")
    }

    /// A CA with its own common name (a rotation's new CA has a name of its own).
    pub fn named(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let pem = params.self_signed(&key).unwrap().pem();
        ThirdCa { issuer: rcgen::Issuer::new(params, key), pem }
    }

    /// A client certificate for `partner-third` with serial `serial`, written as `<dir>/<name>`.
    pub fn issue(&self, dir: &Path, name: &str, serial: u64) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["partner-third".into()]).unwrap();
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A CRL revoking `serials`, written to `path`.
    pub fn revoke(&self, path: &Path, number: u64, serials: &[u64]) {
        self.revoke_until(path, number, serials, (2035, 1, 1));
    }

    /// [`Self::revoke`] with the given nextUpdate (year, month, day).
    pub fn revoke_until(&self, path: &Path, number: u64, serials: &[u64], next: (i32, u8, u8)) {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(next.0, next.1, next.2),
            crl_number: number.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap();
        std::fs::write(path, crl.pem().unwrap()).unwrap();
    }
}
