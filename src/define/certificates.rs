//! Client certificates for mutual TLS (SPEC §6): `import_client_certificate` and
//! `drop_client_certificate`, and what the worker loads to present them. Only this module
//! writes `outbound_msg.client_certificate`.
//!
//! A certificate is checked when imported (PEM, a single private key that belongs to it, valid
//! now); its private key is never shown back or quoted in an error.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use super::validate;
use crate::deliver::tls;
use crate::error::{required, Error, Kind, Result};
use crate::roles;

/// Stores a client certificate (PEM chain, end-entity first) and its private key (PEM) under
/// `name`; returns the certificate's SHA-256 fingerprint.
#[pg_extern]
fn import_client_certificate(
    name: Option<&str>,
    certificate_pem: Option<&str>,
    private_key_pem: Option<&str>,
) -> std::result::Result<String, ErrorReport> {
    let name = required(name, "name")?;
    let certificate_pem = required(certificate_pem, "certificate_pem")?;
    let private_key_pem = required(private_key_pem, "private_key_pem")?;
    roles::api_call(|client, _| {
        validate::unique_name(name).map_err(|reason| {
            Error::new(
                Kind::InvalidParameter,
                format!("certificate name \"{name}\" is invalid: {reason}"),
            )
        })?;
        let (_, description) =
            tls::parse_identity(certificate_pem, private_key_pem).map_err(|err| {
                Error::new(
                    Kind::InvalidParameter,
                    format!("client certificate \"{name}\" refused: {err}"),
                )
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if description.not_after < now {
            return Err(Error::new(
                Kind::InvalidParameter,
                format!("client certificate \"{name}\" has expired"),
            )
            .with_detail(format!(
                "It was valid until {}.",
                utc(description.not_after)
            )));
        }
        if description.not_before > now {
            return Err(Error::new(
                Kind::InvalidParameter,
                format!("client certificate \"{name}\" is not valid yet"),
            )
            .with_detail(format!("It is valid from {}.", utc(description.not_before))));
        }
        if exists(client, name)? {
            return Err(Error::new(
                Kind::DuplicateObject,
                format!("client certificate \"{name}\" already exists"),
            )
            .with_hint("Drop it first to replace it."));
        }
        client.update(
            "INSERT INTO outbound_msg.client_certificate
                 (name, certificate_pem, private_key_pem, subject, not_before, not_after, fingerprint)
             VALUES ($1, $2, $3, $4, to_timestamp($5), to_timestamp($6), $7)",
            None,
            &[
                name.into(),
                certificate_pem.into(),
                private_key_pem.into(),
                description.subject.as_str().into(),
                (description.not_before as f64).into(),
                (description.not_after as f64).into(),
                description.fingerprint.as_str().into(),
            ],
        )?;
        Ok(description.fingerprint)
    })
}

/// Deletes a client certificate no message uses.
#[pg_extern]
fn drop_client_certificate(name: Option<&str>) -> std::result::Result<(), ErrorReport> {
    let name = required(name, "name")?;
    roles::api_call(|client, _| {
        require(client, name)?;
        let users: Vec<String> = client
            .select(
                "SELECT format('%s on %s', unique_name, object) FROM outbound_msg.message
                  WHERE client_certificate = $1 ORDER BY 1",
                None,
                &[name.into()],
            )?
            .filter_map(|row| row.get::<String>(1).ok().flatten())
            .collect();
        if !users.is_empty() {
            return Err(Error::new(
                Kind::DependentObjectsStillExist,
                format!(
                    "client certificate \"{name}\" is used by outbound message {}",
                    users.join(", ")
                ),
            )
            .with_hint("Alter or drop those messages first."));
        }
        client.update(
            "DELETE FROM outbound_msg.client_certificate WHERE name = $1",
            None,
            &[name.into()],
        )?;
        Ok(())
    })
}

fn utc(unix_seconds: i64) -> String {
    let micros = (unix_seconds - 946_684_800).saturating_mul(1_000_000);
    crate::wire::values::timestamptz(micros).unwrap_or_default()
}

fn exists(client: &SpiClient, name: &str) -> Result<bool> {
    Ok(client
        .select(
            "SELECT 1 FROM outbound_msg.client_certificate WHERE name = $1",
            Some(1),
            &[name.into()],
        )?
        .len()
        == 1)
}

/// A certificate of that name must exist (42704).
pub fn require(client: &SpiClient, name: &str) -> Result<()> {
    if exists(client, name)? {
        Ok(())
    } else {
        Err(Error::new(
            Kind::UndefinedObject,
            format!("client certificate \"{name}\" does not exist"),
        )
        .with_hint("Import it with outbound_msg.import_client_certificate."))
    }
}

/// Fingerprints of the named certificates that exist, for the worker's cache.
pub fn fingerprints(names: &[String]) -> Result<Vec<(String, String)>> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT name, fingerprint FROM outbound_msg.client_certificate WHERE name = ANY ($1)",
            None,
            &[names.to_vec().into()],
        )?;
        let mut found = Vec::new();
        for row in rows {
            found.push((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
            ));
        }
        Ok(found)
    })
}

/// The certificate and key PEM of a certificate, for the worker.
pub fn pem(name: &str) -> Result<Option<(String, String)>> {
    let (certificate, key) = Spi::get_two_with_args::<String, String>(
        "SELECT certificate_pem, private_key_pem FROM outbound_msg.client_certificate WHERE name = $1",
        &[name.into()],
    )?;
    Ok(certificate.zip(key))
}
