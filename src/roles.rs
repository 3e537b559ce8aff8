//! Whose privileges a piece of SQL runs with. Checks use the calling role; writes to our own
//! tables run as the extension's owner (callers hold no privileges on them); reads of what a
//! message sends run as its send-as role, so PostgreSQL's own rules decide what may leave.

use pgrx::prelude::*;

use crate::unguarded;

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

/// Whether `role` may SELECT `column` of `table`, through a table or a column grant (or by
/// owning it, or being a superuser), as PostgreSQL decides.
pub fn can_select_column(role: pg_sys::Oid, table: pg_sys::Oid, column: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(column) else {
        return false;
    };
    let select = pg_sys::ACL_SELECT as pg_sys::AclMode;
    // SAFETY: catalog lookups; an unknown column has attnum 0 (InvalidAttrNumber).
    unsafe {
        if pg_sys::pg_class_aclcheck(table, role, select) == pg_sys::AclResult::ACLCHECK_OK {
            return true;
        }
        let attnum = pg_sys::get_attnum(table, name.as_ptr());
        attnum > 0
            && pg_sys::pg_attribute_aclcheck(table, attnum, role, select)
                == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Whether row-level security filters what `role` sees of `table`: PostgreSQL's own rule
/// (enabled on the table; not for superusers, BYPASSRLS roles, or the owner unless forced).
pub fn row_security_applies(role: pg_sys::Oid, table: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup; with noError it never raises.
    unsafe {
        pg_sys::check_enable_rls(table, role, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    }
}

/// The search path of code that runs with a role other than the caller's: PostgreSQL's own
/// choice for such code (maintenance commands, `RestrictSearchPath`), so that no schema,
/// temporary object or operator of the caller's can stand in for a name of ours.
pub const SAFE_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

/// Runs `f` with `search_path` set to `pg_catalog, pg_temp`, whatever the session, the role or
/// the database set.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&[(c"search_path", SAFE_SEARCH_PATH)], f)
}

/// Runs `f` with each setting at its value for its duration, in one GUC nest level (undone by
/// transaction abort if `f` raises an ERROR).
fn with_settings<R>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level undone below (and by transaction abort on error).
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let result = f();
    // SAFETY: pops the nest level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// Runs SQL of ours in `f` with the privileges of the extension's owner `owner` and the safe
/// search path: what the caller set (search_path, temporary types and functions) cannot steer
/// it.
pub fn run_sql_as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    run_with_context(owner, false, || with_safe_search_path(f))
}

/// Runs SQL in `f` with the privileges of `role` (a message's send-as role: its criteria) and
/// the safe search path, as a security-restricted operation, as PostgreSQL runs an index
/// expression: it cannot change the session's role or leave temporary objects behind.
pub fn run_sql_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    run_with_context(role, true, || with_safe_search_path(f))
}

/// Runs `f`, which reads rows of a message's table, as [`run_sql_as`] does, and with
/// `row_security` on whatever the session set: a query that must apply `role`'s policies may
/// not silently skip them, nor fail because a session turned them off.
pub fn read_rows_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let settings = [(c"search_path", SAFE_SEARCH_PATH), (c"row_security", c"on")];
    run_with_context(role, true, || with_settings(&settings, f))
}

/// Runs `f` with the privileges of `role`, then restores the previous role, also when `f`
/// raises an ERROR (the guard's drop runs while the error unwinds). For code that runs no SQL
/// (the queue's writes by `heap_insert`); SQL runs through [`run_sql_as`].
pub fn run_as<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    run_with_context(role, false, f)
}

fn run_with_context<R>(role: pg_sys::Oid, restricted: bool, f: impl FnOnce() -> R) -> R {
    let mut saved_role = pg_sys::InvalidOid;
    let mut saved_context = 0;
    let mut context = pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
    if restricted {
        context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    }
    // SAFETY: reads and sets backend-local state; the guard restores it.
    unsafe {
        unguarded::GetUserIdAndSecContext(&mut saved_role, &mut saved_context);
        unguarded::SetUserIdAndSecContext(role, saved_context | context);
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
    // SAFETY: reads a setting that always exists; copied before anything changes it.
    let search_path = unsafe {
        std::ffi::CStr::from_ptr(pg_sys::GetConfigOption(
            c"search_path".as_ptr(),
            false,
            false,
        ))
    }
    .to_owned();
    let previous = CALLER_SEARCH_PATH.replace(Some(search_path));
    let result = run_sql_as_owner(extension_owner(), || {
        Spi::connect_mut(|client| f(client, caller))
    });
    CALLER_SEARCH_PATH.set(previous);
    Ok(result?)
}

thread_local! {
    /// The search_path of the session that called the running API function.
    static CALLER_SEARCH_PATH: std::cell::RefCell<Option<std::ffi::CString>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` as `caller`, the role that called the running API function, with the caller's own
/// search_path, as a security-restricted operation: for parsing what the caller wrote
/// (criteria) the way the caller meant it, with no privilege of the owner's.
pub fn run_as_caller<R>(caller: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let search_path = CALLER_SEARCH_PATH
        .with_borrow(|path| path.clone())
        .unwrap_or_else(|| SAFE_SEARCH_PATH.to_owned());
    run_with_context(caller, true, || {
        with_settings(&[(c"search_path", &search_path)], f)
    })
}

/// The owner of the extension (the bootstrap superuser if it cannot be read). Every name of
/// the query is qualified: the caller's search_path cannot change which row answers.
pub fn extension_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension
          WHERE extname OPERATOR(pg_catalog.=) 'outbound_msg'::pg_catalog.name",
    )
    .ok()
    .flatten()
    .unwrap_or(pg_sys::BOOTSTRAP_SUPERUSERID.into())
}

struct Restore {
    role: pg_sys::Oid,
    context: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: restores what `run_as` saved.
        unsafe { unguarded::SetUserIdAndSecContext(self.role, self.context) }
    }
}
