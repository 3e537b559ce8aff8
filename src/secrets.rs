//! Keeping secrets out of sight (SPEC §6): passwords in endpoint URLs and private keys never
//! appear in error messages, views or the server log.
//!
//! The masking functions are pure. [`install_log_filter`] adds an `emit_log_hook` that masks
//! them in every log line and every field of it (message, DETAIL, HINT, CONTEXT with a
//! statement's bind parameters, internal queries; `log_statement` output) and hides the
//! statement text of an error whose statement carries one.

use std::borrow::Cow;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;

const MASK: &str = "********";
const KEY_BEGIN: &str = "-----BEGIN";
const PRIVATE_KEY: &str = "PRIVATE KEY-----";

/// `text` with the password of every `scheme://user:password@` replaced by `********`.
pub fn mask_credentials(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(start) = rest.find("://") {
        let authority_start = start + 3;
        let authority_len = rest[authority_start..]
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '\'' | '"' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(rest.len() - authority_start);
        let authority = &rest[authority_start..authority_start + authority_len];
        out.push_str(&rest[..authority_start]);
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &rest[authority_start + authority_len..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `text` with every PEM private key block replaced by `********`.
pub fn mask_private_keys(text: &str) -> Cow<'_, str> {
    if !text.contains(PRIVATE_KEY) {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(begin) = rest.find(KEY_BEGIN) {
        let header_end = rest[begin..]
            .find("-----\n")
            .map(|i| begin + i)
            .unwrap_or(rest.len());
        let is_private = rest[begin..header_end.min(rest.len())].contains("PRIVATE KEY");
        out.push_str(&rest[..begin]);
        if !is_private {
            out.push_str(KEY_BEGIN);
            rest = &rest[begin + KEY_BEGIN.len()..];
            continue;
        }
        // Up to and including the END line of this key, or to the end of the text.
        let end = rest[begin..]
            .find("-----END")
            .and_then(|i| {
                rest[begin + i..]
                    .find(PRIVATE_KEY)
                    .map(|j| begin + i + j + PRIVATE_KEY.len())
            })
            .unwrap_or(rest.len());
        out.push_str(MASK);
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Both masks.
pub fn mask(text: &str) -> Cow<'_, str> {
    match mask_credentials(text) {
        Cow::Borrowed(text) => mask_private_keys(text),
        Cow::Owned(text) => Cow::Owned(mask_private_keys(&text).into_owned()),
    }
}

/// Longest `last_error` kept, in characters: a listener's fault string may be as long as its
/// whole response.
pub const LAST_ERROR_CHARS: usize = 1_000;

/// `reason` as `last_error` (and an endpoint's last error) keeps it: secrets masked, at most [`LAST_ERROR_CHARS`] characters
/// (what is cut is counted).
pub fn recorded_error(reason: &str) -> String {
    let masked = mask(reason);
    let total = masked.chars().count();
    if total <= LAST_ERROR_CHARS {
        return masked.into_owned();
    }
    let kept: String = masked.chars().take(LAST_ERROR_CHARS).collect();
    format!("{kept}... ({} more characters)", total - LAST_ERROR_CHARS)
}

/// Whether `text` carries a secret [`mask`] would hide.
fn has_secret(text: &str) -> bool {
    matches!(mask(text), Cow::Owned(_))
}

static mut PREVIOUS_HOOK: pg_sys::emit_log_hook_type = None;

/// Installs the log filter in this process (and, when preloading, in every process).
pub fn install_log_filter() {
    // SAFETY: called once from `_PG_init`, on the main thread.
    unsafe {
        PREVIOUS_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(filter_log);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn filter_log(data: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the error being emitted; its strings live in ErrorContext, the
    // current memory context here, where the replacements are allocated too.
    unsafe {
        let data = &mut *data;
        for field in [
            &mut data.message,
            &mut data.detail,
            &mut data.detail_log,
            &mut data.hint,
            &mut data.context,
            &mut data.internalquery,
        ] {
            mask_field(field);
        }
        let statement = pg_sys::debug_query_string;
        if !statement.is_null() && has_secret(&CStr::from_ptr(statement).to_string_lossy()) {
            data.hide_stmt = true;
        }
        if let Some(previous) = PREVIOUS_HOOK {
            previous(data);
        }
    }
}

/// Replaces a C string of an error with its masked form, when it has something to mask.
unsafe fn mask_field(field: &mut *mut std::ffi::c_char) {
    if field.is_null() {
        return;
    }
    // SAFETY: a NUL-terminated string of the error.
    let text = unsafe { CStr::from_ptr(*field) }.to_string_lossy();
    if let Cow::Owned(masked) = mask(&text) {
        if let Ok(masked) = CString::new(masked) {
            // SAFETY: copies into the current memory context (ErrorContext while emitting).
            *field = unsafe { pg_sys::pstrdup(masked.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked_anywhere_in_text() {
        assert_eq!(
            mask_credentials("POST https://svc:s3cr3t@erp.example/soap failed"),
            "POST https://svc:********@erp.example/soap failed"
        );
        assert_eq!(
            mask_credentials("a 'http://u:p@h:8080' and http://x:y@z?q=1"),
            "a 'http://u:********@h:8080' and http://x:********@z?q=1"
        );
        assert_eq!(
            mask_credentials("http://user@host/ http://host/a@b"),
            "http://user@host/ http://host/a@b"
        );
        assert!(matches!(
            mask_credentials("no urls at all"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn last_error_is_masked_and_bounded() {
        let long = format!("SOAP fault: {}", "x".repeat(5_000));
        let recorded = recorded_error(&long);
        assert_eq!(
            recorded.chars().count(),
            LAST_ERROR_CHARS + "... (4012 more characters)".len()
        );
        assert!(recorded.ends_with("... (4012 more characters)"));
        assert_eq!(
            recorded_error("connect to http://svc:p@ss@host:9/x failed"),
            "connect to http://svc:********@host:9/x failed"
        );
        assert_eq!(recorded_error("short"), "short");
    }

    #[test]
    fn private_keys_are_masked() {
        let text =
            "key => '-----BEGIN PRIVATE KEY-----\nMIIEv\nabc\n-----END PRIVATE KEY-----', cert";
        assert_eq!(mask_private_keys(text), "key => '********', cert");
        let ec = "-----BEGIN EC PRIVATE KEY-----\nxyz\n-----END EC PRIVATE KEY-----";
        assert_eq!(mask_private_keys(ec), "********");
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert!(matches!(mask_private_keys(certificate), Cow::Borrowed(_)));
        let both = format!("{certificate}\n{ec}");
        assert_eq!(mask(&both), format!("{certificate}\n********"));
        let cut = "-----BEGIN RSA PRIVATE KEY-----\nabc (truncated";
        assert_eq!(mask_private_keys(cut), "********");
    }
}
