//! TLS to Postgres with rustls, configured the way libpq is: `sslmode` (disable, prefer,
//! require, verify-ca, verify-full) and a root certificate file.
//!
//! - `disable`: plaintext.
//! - `prefer` (the default, as in libpq): TLS when the server offers it, plaintext when not;
//!   the certificate is not checked (it protects against eavesdropping, not impostors).
//! - `require`: TLS or no connection; the certificate is not checked, unless a root
//!   certificate file is given, which makes it `verify-ca` (libpq does the same).
//! - `verify-ca`: the certificate must be signed by a trusted CA (the root certificate
//!   file's, else the system's trust store); any host name.
//! - `verify-full`: `verify-ca`, and the certificate must name the host connected to.
//!
//! A refused certificate fails the connection with a sentence that says why and which
//! setting to look at, instead of rustls's bare error names.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection to Postgres is secured (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, prefer, require, verify-ca, verify-full";

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates: whether TLS is tried and whether it is required.
    pub(crate) fn negotiation(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "`{other}` is not an sslmode (one of {})",
                    SslMode::NAMES
                ))
            }
        })
    }
}

/// Where trusted CAs come from: a PEM file, or the system's trust store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    File(PathBuf),
    System,
}

impl RootCerts {
    /// libpq's spelling: a path, or `system` for the system's trust store.
    pub fn parse(value: &str) -> Self {
        match value {
            "system" => RootCerts::System,
            path => RootCerts::File(PathBuf::from(path)),
        }
    }

    fn describe(&self) -> String {
        match self {
            RootCerts::File(path) => {
                format!("a CA in {} (sslrootcert or DB_SSLROOTCERT)", path.display())
            }
            RootCerts::System => "a CA of the system's trust store".into(),
        }
    }
}

/// A root certificate file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("DB_SSLROOTCERT: cannot use {path}: {reason}")]
pub struct RootCertError {
    pub path: String,
    pub reason: String,
}

/// The connector for `mode`, trusting `roots` (system roots when None) where it checks
/// certificates.
pub fn connector(
    mode: SslMode,
    roots: Option<&RootCerts>,
) -> Result<MakeRustlsConnect, RootCertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A root file given is read even where this mode does not check certificates: a wrong
    // path stops start-up instead of surfacing when someone tightens the mode.
    if let Some(roots @ RootCerts::File(_)) = roots {
        load_roots(roots)?;
    }
    let trusted = || roots.cloned().unwrap_or(RootCerts::System);
    // (whether the host name is checked, the CAs trusted), or None: nothing is checked.
    let check = match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => None,
        (SslMode::Require | SslMode::VerifyCa, _) => Some((false, trusted())),
        (SslMode::VerifyFull, _) => Some((true, trusted())),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        None => Arc::new(Unchecked(provider.clone())),
        Some((check_name, roots)) => {
            let store = load_roots(&roots)?;
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| RootCertError {
                        path: roots.describe(),
                        reason: e.to_string(),
                    })?;
            Arc::new(Checked {
                inner,
                check_name,
                roots,
                mode,
            })
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, RootCertError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let unusable = |reason: String| RootCertError {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unusable(format!("not PEM certificates ({e})")))?;
            if certs.is_empty() {
                return Err(unusable("no PEM certificate in it".into()));
            }
            let (_, refused) = store.add_parsable_certificates(certs);
            if store.is_empty() {
                return Err(unusable(format!(
                    "none of its {refused} certificates could be read"
                )));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(RootCertError {
                    path: "the system's trust store".into(),
                    reason:
                        "it holds no certificates (install ca-certificates, or set DB_SSLROOTCERT)"
                            .into(),
                });
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require`: encrypted, any certificate (the handshake's signatures are still
/// checked, so the session is with the holder of the certificate's key).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`: webpki's checks, the host name's only in `verify-full`,
/// and a refusal that says why.
#[derive(Debug)]
struct Checked {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
    roots: RootCerts,
    mode: SslMode,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let refusal = match verdict {
            Ok(verified) => return Ok(verified),
            Err(rustls::Error::InvalidCertificate(refusal)) => refusal,
            Err(other) => return Err(other),
        };
        let mode = self.mode;
        let why = match refusal {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                if !self.check_name =>
            {
                return Ok(ServerCertVerified::assertion());
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for the host {} (sslmode={mode}; \
                     connect by a name the certificate holds)",
                    server_name.to_str()
                )
            }
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by {} (sslmode={mode})",
                self.roots.describe()
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server's certificate has expired (sslmode={mode})")
            }
            other => format!("the server's certificate was refused: {other:?} (sslmode={mode})"),
        };
        Err(rustls::Error::General(why))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_reads_libpq_names_and_refuses_others_naming_them() {
        assert_eq!("verify-full".parse::<SslMode>(), Ok(SslMode::VerifyFull));
        assert_eq!("disable".parse::<SslMode>(), Ok(SslMode::Disable));
        let refusal = "allow-anything".parse::<SslMode>().unwrap_err();
        assert!(
            refusal.contains("allow-anything") && refusal.contains("verify-ca"),
            "{refusal}"
        );
    }

    #[test]
    fn an_unreadable_or_empty_root_file_is_refused_with_its_path() {
        let missing = RootCerts::File("/nonexistent/ca.pem".into());
        let error = connector(SslMode::VerifyFull, Some(&missing))
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("DB_SSLROOTCERT: cannot use /nonexistent/ca.pem"),
            "{error}"
        );
        let empty = std::env::temp_dir().join(format!("empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = connector(SslMode::VerifyCa, Some(&RootCerts::File(empty.clone())))
            .err()
            .unwrap();
        std::fs::remove_file(&empty).unwrap();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
