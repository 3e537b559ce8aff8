//! Every setting of outbound_msg: defined once in [`init`], read through the accessors below.
//!
//! Every setting takes effect on reload (SIGHUP): workers re-read them at each step.

use std::ffi::CString;
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

static PAUSE_DELIVERY: GucSetting<bool> = GucSetting::<bool>::new(false);
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
static TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static RETRY_MIN_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static RETRY_MAX_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(7_200_000);
static MAX_AGE_MS: GucSetting<i32> = GucSetting::<i32>::new(86_400_000);
static MAX_CONNECTIONS: GucSetting<i32> = GucSetting::<i32>::new(8);
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
static WORKER_IDLE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static ORGANIZATION_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ALLOWED_ENDPOINTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static ENTERPRISE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static PARTNER_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Largest number of notifications in one SOAP message (Salesforce's limit).
pub const MAX_BATCH_SIZE: i32 = 100;

/// Registers every setting. Called from `_PG_init`.
pub fn init() {
    GucRegistry::define_bool_guc(
        c"outbound_msg.pause_delivery",
        c"When on, workers send nothing; captured notifications wait in the queue.",
        c"For a listener's maintenance window. Capture goes on; delivery resumes when turned off.",
        &PAUSE_DELIVERY,
        GucContext::Sighup,
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
    GucRegistry::define_int_guc(
        c"outbound_msg.max_workers",
        c"Most delivery workers running at once, one per database being served.",
        c"Databases with work beyond this wait their turn: a worker gives its place up to a waiting database after a while. Each worker takes one of max_worker_processes.",
        &MAX_WORKERS,
        1,
        crate::deliver::shmem::MAX_DATABASES as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.worker_idle_timeout",
        c"How long a delivery worker with nothing queued stays before it exits.",
        c"The next commit that queues a notification starts a worker again.",
        &WORKER_IDLE_TIMEOUT_MS,
        0,
        86_400_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.connect_timeout",
        c"Time allowed to open a connection to a listener, within outbound_msg.timeout.",
        c"Also how long a request may go unanswered before its endpoint counts as slow: it then gets no further request until that one ends.",
        &CONNECT_TIMEOUT_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.retry_min_interval",
        c"Wait before the first retry of a failed notification.",
        c"Each further failure doubles the wait (with jitter), up to outbound_msg.retry_max_interval.",
        &RETRY_MIN_INTERVAL_MS,
        100,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.retry_max_interval",
        c"Longest wait between two attempts to deliver a notification.",
        c"Exponential backoff stops growing here.",
        &RETRY_MAX_INTERVAL_MS,
        100,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.max_age",
        c"Age after which a notification that still fails is kept as expired and no longer retried.",
        c"Counted from its capture, or from its last outbound_msg.retry().",
        &MAX_AGE_MS,
        1_000,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"outbound_msg.max_connections",
        c"Most SOAP requests a worker keeps in flight at once.",
        c"An endpoint uses at most half of them, so one slow endpoint cannot hold up the others.",
        &MAX_CONNECTIONS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: the check hook is a plain function that cannot unwind.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"outbound_msg.organization_id",
            c"OrganizationId sent in every message; empty derives one from the cluster.",
            c"18 ASCII letters and digits. Empty (the default) derives a stable id from the cluster's system identifier.",
            &ORGANIZATION_ID,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_organization_id),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"outbound_msg.allowed_endpoints",
        c"Host patterns that endpoint URLs must match; empty allows any host.",
        c"Comma-separated: erp.example.com, *.example.com (subdomains), or *. Checked when a message is defined or altered, and before every send.",
        &ALLOWED_ENDPOINTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"outbound_msg.ca_file",
        c"PEM file of the certificate authorities HTTPS endpoints are verified against.",
        c"Empty (the default) uses the system's CA store. Read again on reload.",
        &CA_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
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

/// Accepts an empty value or 18 ASCII letters and digits.
unsafe extern "C-unwind" fn check_organization_id(
    new_value: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a NUL-terminated string, or to NULL.
    let value = unsafe {
        if new_value.is_null() || (*new_value).is_null() {
            return true;
        }
        std::ffi::CStr::from_ptr(*new_value).to_bytes()
    };
    value.is_empty() || (value.len() == 18 && value.iter().all(u8::is_ascii_alphanumeric))
}

fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `outbound_msg.pause_delivery`.
pub fn pause_delivery() -> bool {
    PAUSE_DELIVERY.get()
}

/// `outbound_msg.batch_size`, always within 1..=100.
pub fn batch_size() -> usize {
    BATCH_SIZE.get().clamp(1, MAX_BATCH_SIZE) as usize
}

/// `outbound_msg.timeout`.
pub fn timeout() -> Duration {
    millis(&TIMEOUT_MS)
}

/// `outbound_msg.max_workers`.
pub fn max_workers() -> usize {
    MAX_WORKERS.get().max(1) as usize
}

/// `outbound_msg.worker_idle_timeout`.
pub fn worker_idle_timeout() -> Duration {
    millis(&WORKER_IDLE_TIMEOUT_MS)
}

/// `outbound_msg.connect_timeout`.
pub fn connect_timeout() -> Duration {
    millis(&CONNECT_TIMEOUT_MS)
}

fn millis(setting: &GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(1) as u64)
}

/// `outbound_msg.retry_min_interval`.
pub fn retry_min_interval() -> Duration {
    millis(&RETRY_MIN_INTERVAL_MS)
}

/// `outbound_msg.retry_max_interval`.
pub fn retry_max_interval() -> Duration {
    millis(&RETRY_MAX_INTERVAL_MS)
}

/// `outbound_msg.max_age`.
pub fn max_age() -> Duration {
    millis(&MAX_AGE_MS)
}

/// `outbound_msg.max_connections`.
pub fn max_connections() -> usize {
    MAX_CONNECTIONS.get().clamp(1, 64) as usize
}

/// `outbound_msg.organization_id`, `None` when empty (then derived from the cluster).
pub fn organization_id() -> Option<String> {
    Some(text(&ORGANIZATION_ID)).filter(|id| !id.is_empty())
}

/// `outbound_msg.allowed_endpoints`.
pub fn allowed_endpoints() -> String {
    text(&ALLOWED_ENDPOINTS)
}

/// `outbound_msg.ca_file`, `None` when empty (then the system's CA store).
pub fn ca_file() -> Option<String> {
    Some(text(&CA_FILE)).filter(|path| !path.is_empty())
}

/// `outbound_msg.enterprise_url`.
pub fn enterprise_url() -> String {
    text(&ENTERPRISE_URL)
}

/// `outbound_msg.partner_url`.
pub fn partner_url() -> String {
    text(&PARTNER_URL)
}
