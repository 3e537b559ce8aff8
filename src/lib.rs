//! outbound_msg: Salesforce-style Outbound Messages for PostgreSQL.
//!
//! Row triggers capture changes into a durable queue ([`capture`], [`queue`]); a background
//! worker ([`worker`]) delivers them as SOAP messages ([`soap`], [`http`]) until acknowledged.
//! Definitions live in [`catalog`]; settings in [`guc`].

use pgrx::prelude::*;

mod admin;
mod capture;
mod catalog;
mod certificates;
mod criteria;
mod error;
mod guc;
mod http;
mod ids;
mod pending;
mod pgver;
mod queue;
mod queue_insert;
mod retry;
mod roles;
mod secrets;
mod soap;
mod sqltypes;
mod tls;
mod unguarded;
mod validate;
mod values;
mod wire;
mod worker;
mod wsdl;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Library entry point: settings always; the worker only when preloaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // No error of ours carries a Rust backtrace, whatever RUST_BACKTRACE the server's
    // environment has: pgrx adds one to the DETAIL of every ERROR that crossed Rust code.
    // SAFETY: _PG_init runs before this process starts any thread of ours.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    guc::init();
    secrets::install_log_filter();
    pending::install_hook();
    worker::register();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'outbound_msg'"]
    }
}
