//! Whose privileges a piece of SQL runs with. Checks use the calling role; writes to our own
//! tables run as the extension's owner (callers hold no privileges on them); reads of what a
//! message sends run as its send-as role, so PostgreSQL's own rules decide what may leave.

use pgrx::prelude::*;

/// The role running the current command.
pub fn current() -> pg_sys::Oid {
    // SAFETY: reads backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// Whether `role` is a superuser.
pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup; an unknown role is simply not a superuser.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Whether `member` is a member of `role`, as `SET ROLE` requires.
pub fn is_member_of(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup.
    unsafe { pg_sys::is_member_of_role(member, role) }
}

/// Runs `f` with the privileges of `role`, then restores the previous role, also when `f`
/// raises an ERROR (the guard's drop runs while the error unwinds).
pub fn run_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_role = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: reads and sets backend-local state; the guard restores it.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_role, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore {
        role: saved_role,
        context: saved_context,
    };
    f()
}

/// Runs `f` in an SPI connection as the owner of the extension, who owns its tables; `f` gets
/// the role that called (for the checks that are about the caller). This is how every SQL
/// function of the API runs.
pub fn api_call<T>(
    f: impl FnOnce(&mut pgrx::spi::SpiClient, pg_sys::Oid) -> crate::error::Result<T>,
) -> Result<T, pgrx::pg_sys::panic::ErrorReport> {
    let caller = current();
    Ok(run_as_owner(|| {
        Spi::connect_mut(|client| f(client, caller))
    })?)
}

/// Runs `f` as the owner of the extension, who owns its tables.
pub fn run_as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'outbound_msg'",
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::BOOTSTRAP_SUPERUSERID.into());
    run_as(owner, f)
}

struct Restore {
    role: pg_sys::Oid,
    context: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: restores what `run_as` saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.role, self.context) }
    }
}
