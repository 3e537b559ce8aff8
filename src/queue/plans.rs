//! Statements for the queue planned once per backend and kept.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::Result;

pub type KeptPlan = std::cell::OnceCell<pgrx::spi::OwnedPreparedStatement>;

thread_local! {
    // Statements planned once per backend and kept: PostgreSQL replans them itself when what
    // they use changes (the extension dropped and created again, say).
    pub static CLAIM: KeptPlan = const { KeptPlan::new() };
    pub static ADMIT: KeptPlan = const { KeptPlan::new() };
    pub static ACKNOWLEDGE: KeptPlan = const { KeptPlan::new() };
    pub static RECORD_FAILURE: KeptPlan = const { KeptPlan::new() };
}

/// Executes the kept plan of `sql` (argument types `types`), planning it on first use.
pub fn kept_update<'conn>(
    plan: &'static std::thread::LocalKey<KeptPlan>,
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[pg_sys::Oid],
    limit: Option<libc::c_long>,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'conn>> {
    with_kept_plan(plan, client, sql, types, |client, plan| {
        Ok(client.update(plan, limit, args)?)
    })
}

/// Runs `run` with the kept plan of `sql` (argument types `types`), planning it on first use.
pub fn with_kept_plan<'conn, R>(
    plan: &'static std::thread::LocalKey<KeptPlan>,
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[pg_sys::Oid],
    run: impl FnOnce(&mut SpiClient<'conn>, &pgrx::spi::OwnedPreparedStatement) -> Result<R>,
) -> Result<R> {
    plan.with(|cell| {
        if cell.get().is_none() {
            let types: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
            let kept = client.prepare_mut(sql, &types)?.keep();
            let _ = cell.set(kept);
        }
        run(client, cell.get().expect("the plan was just set"))
    })
}
