//! Every setting of outbound_msg: defined once in [`init`], read through the accessors below.
//!
//! Settings other than `outbound_msg.database` take effect on reload (SIGHUP); the worker
//! re-reads them at the top of each round.

use std::ffi::CString;
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
static TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static ENTERPRISE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static PARTNER_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Largest number of notifications in one SOAP message (Salesforce's limit).
pub const MAX_BATCH_SIZE: i32 = 100;

/// Registers every setting. Called from `_PG_init`.
pub fn init() {
    GucRegistry::define_string_guc(
        c"outbound_msg.database",
        c"Database whose outbound messages the background worker delivers.",
        c"The worker connects to this database at server start.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.batch_size",
        c"Most notifications of one outbound message sent in one SOAP message.",
        c"Between 1 and 100, as Salesforce sends at most 100 notifications per message.",
        &BATCH_SIZE,
        1,
        MAX_BATCH_SIZE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.timeout",
        c"Time allowed for one delivery: connect, send and the listener's answer.",
        c"A listener that has not answered in time has failed; the notifications are retried.",
        &TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"outbound_msg.enterprise_url",
        c"EnterpriseUrl sent in every message.",
        c"Listeners written for Salesforce may use it to call back; any string is accepted.",
        &ENTERPRISE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"outbound_msg.partner_url",
        c"PartnerUrl sent in every message.",
        c"Listeners written for Salesforce may use it to call back; any string is accepted.",
        &PARTNER_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `outbound_msg.database`.
pub fn database() -> String {
    text(&DATABASE)
}

/// `outbound_msg.batch_size`, always within 1..=100.
pub fn batch_size() -> usize {
    BATCH_SIZE.get().clamp(1, MAX_BATCH_SIZE) as usize
}

/// `outbound_msg.timeout`.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.get().max(1) as u64)
}

/// `outbound_msg.enterprise_url`.
pub fn enterprise_url() -> String {
    text(&ENTERPRISE_URL)
}

/// `outbound_msg.partner_url`.
pub fn partner_url() -> String {
    text(&PARTNER_URL)
}
