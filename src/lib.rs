//! outbound_msg: Salesforce-style Outbound Messages for PostgreSQL.
//!
//! The pipeline, one folder per stage: definitions ([`define`]); row triggers that capture
//! changes ([`capture`]) into a durable queue ([`queue`], its only writer); background workers
//! that deliver them ([`deliver`]) as SOAP messages ([`wire`]) until acknowledged. Settings
//! live in [`guc`]; roles, secrets and PostgreSQL plumbing in the files beside them.

use pgrx::prelude::*;

mod capture;
mod define;
mod deliver;
mod error;
mod guc;
mod pgver;
mod queue;
mod relations;
mod roles;
mod secrets;
mod sqltypes;
mod unguarded;
mod wire;

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
    capture::statement::install_hook();
    deliver::register();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'outbound_msg'"]
    }
}
