//! TLS material (SPEC §6): the roots server certificates are verified against, and client
//! identities (certificate chain and private key) for mutual TLS.
//!
//! Pure Rust, no pgrx. Nothing here ever puts key material into an error message.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, PemItem, PrivateKey};

/// Trust anchors for server certificates, or why there are none.
pub type Roots = Result<Arc<Vec<Certificate<'static>>>, String>;

/// The system's CA store, or the certificates of `ca_file` (a private CA) when given.
pub fn load_roots(ca_file: Option<&str>) -> Roots {
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|err| format!("outbound_msg.ca_file \"{path}\" cannot be read: {err}"))?;
            let certs = certificates(&pem)
                .map_err(|_| format!("outbound_msg.ca_file \"{path}\" is not PEM"))?;
            if certs.is_empty() {
                return Err(format!(
                    "outbound_msg.ca_file \"{path}\" holds no certificate"
                ));
            }
            Ok(Arc::new(certs))
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err("the system CA store holds no certificate".to_string());
            }
            Ok(Arc::new(
                found
                    .certs
                    .iter()
                    .map(|c| Certificate::from_der(c).to_owned())
                    .collect(),
            ))
        }
    }
}

fn certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, ()> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let PemItem::Certificate(cert) = item.map_err(|_| ())? {
            certs.push(cert.to_owned());
        }
    }
    Ok(certs)
}

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<Certificate<'static>>,
    key_pem: String,
}

impl Identity {
    /// The private key, for a TLS client configuration.
    pub fn key(&self) -> Option<PrivateKey<'static>> {
        PrivateKey::from_pem(self.key_pem.as_bytes()).ok()
    }
}

/// What an administrator may see of an identity: never the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub subject: String,
    /// Validity, as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the end-entity certificate, hex, colon-separated.
    pub fingerprint: String,
}

/// Why a certificate and key were refused. The messages never quote the PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    NotACertificate,
    NotAKey,
    KeyMismatch,
    Unparseable,
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdentityError::NotACertificate => "certificate_pem holds no PEM certificate",
            IdentityError::NotAKey => "private_key_pem holds no PEM private key, or more than one",
            IdentityError::KeyMismatch => "the private key does not belong to the certificate",
            IdentityError::Unparseable => "the certificate cannot be parsed as X.509",
        })
    }
}

/// Parses and checks a client identity: a certificate chain (end-entity first), exactly one
/// private key, and the key matching the end-entity certificate.
pub fn parse_identity(
    certificate_pem: &str,
    key_pem: &str,
) -> Result<(Identity, Description), IdentityError> {
    let chain =
        certificates(certificate_pem.as_bytes()).map_err(|_| IdentityError::NotACertificate)?;
    let Some(end_entity) = chain.first() else {
        return Err(IdentityError::NotACertificate);
    };
    let mut keys = 0;
    for item in ureq::tls::parse_pem(key_pem.as_bytes()) {
        match item {
            Ok(PemItem::PrivateKey(_)) => keys += 1,
            Ok(_) => {}
            Err(_) => return Err(IdentityError::NotAKey),
        }
    }
    if keys != 1 {
        return Err(IdentityError::NotAKey);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| IdentityError::NotAKey)?;
    let provider = rustls::crypto::ring::default_provider();
    let der_chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    rustls::sign::CertifiedKey::from_der(der_chain, key, &provider).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch,
        rustls::Error::General(_) => IdentityError::NotAKey,
        _ => IdentityError::Unparseable,
    })?;
    let description = describe(end_entity.der())?;
    Ok((
        Identity {
            chain,
            key_pem: key_pem.to_string(),
        },
        description,
    ))
}

fn describe(der: &[u8]) -> Result<Description, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparseable)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(Description {
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        fingerprint,
    })
}
