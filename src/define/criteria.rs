//! Evaluation criteria: a SQL boolean expression over a table's columns, evaluated on a row.
//!
//! Criteria are resolved once, when a message is defined ([`resolve`]): parsed as the defining
//! role, with its search_path, over the table, and stored as PostgreSQL's own deparsed form,
//! every name qualified unless `pg_catalog, pg_temp` finds it (as `pg_get_constraintdef` shows a
//! CHECK constraint). Nothing set later (a writer's search_path, a function or operator created
//! in another schema, a temporary type) can make them mean something else. The analysis refuses
//! anything but a single boolean expression over the row: no other relation, no subquery, no
//! set operation, no aggregate, no volatile function.
//!
//! At capture ([`holds`]), the stored form is embedded in one fixed query, `SELECT (<criteria>\n)
//! FROM (SELECT ($1).*) AS <table>`, the row passed as `$1`, and run as the message's send-as
//! role with the safe search path (see `roles::run_sql_as`): never with the extension owner's
//! privileges. The newline before the closing parenthesis ends any `--` comment. An error it
//! raises names the message in CONTEXT.
//!
//! Prepared plans are kept per backend, keyed by the row's table and the expression's text, so
//! an altered criteria or table gets its own plan; PostgreSQL replans them when the table changes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::PgList;

use crate::error::{Error, Kind, Result};
use crate::roles;

thread_local! {
    /// Kept plans by (row type OID, alias, criteria text).
    static PLANS: RefCell<HashMap<(u32, String, String), pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

unsafe extern "C-unwind" {
    /// Variadic, so not among pgrx's bindings.
    fn errcontext_msg(fmt: *const std::ffi::c_char, ...) -> std::ffi::c_int;
}

/// Checks that `criteria` is a boolean expression over the columns of table `relid`, usable as
/// evaluation criteria, and returns its resolved form (see the module's documentation). Parsed
/// as `caller` with the caller's search_path; must run inside an SPI connection. Syntax errors
/// and unknown columns are raised by PostgreSQL's parser with its own SQLSTATE.
pub fn resolve(relid: pg_sys::Oid, criteria: &str, caller: pg_sys::Oid) -> Result<String> {
    if criteria.trim().is_empty() {
        return Err(
            Error::new(Kind::InvalidParameter, "criteria must not be empty")
                .with_hint("Omit criteria (NULL) to capture every row."),
        );
    }
    let (relname, table) = Spi::get_two_with_args::<String, String>(
        "SELECT c.relname::text, format('%I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = $1",
        &[relid.into()],
    )?;
    let (Some(relname), Some(table)) = (relname, table) else {
        return Err(Error::new(
            Kind::UndefinedTable,
            "table of the criteria does not exist",
        ));
    };
    let alias = pgrx::spi::quote_identifier(&relname);
    let query = criteria_query(criteria, &format!("ONLY {table}"), &alias)?;
    let relname = CString::new(relname)
        .map_err(|_| Error::new(Kind::InvalidParameter, "table name must not contain NUL"))?;
    roles::run_as_caller(caller, || {
        let plan = prepare(&query, &mut [])?;
        // SAFETY: `plan` was just prepared and is not kept; freed here whatever the outcome.
        let outcome = unsafe { inspect(plan) }.map(|expr| {
            // Deparsed with the search path it will run with: a name it would not find
            // there is written qualified.
            roles::with_safe_search_path(|| unsafe {
                let context = pg_sys::deparse_context_for(relname.as_ptr(), relid);
                let text = pg_sys::deparse_expression(expr, context, false, false);
                CStr::from_ptr(text).to_string_lossy().into_owned()
            })
        });
        unsafe { pg_sys::SPI_freeplan(plan) };
        outcome.map_err(|reason| {
            Error::new(
                Kind::InvalidParameter,
                format!("invalid criteria \"{criteria}\": {reason}"),
            )
        })
    })
}

/// Whether `criteria` (resolved) holds for `row`, a composite datum of type `row_type` (the row
/// type of the message's table, or of one of its partitions), named `alias` in the criteria.
/// NULL does not hold. Must run inside an SPI connection, as the message's send-as role; an
/// error names outbound message `message` in CONTEXT.
pub fn holds(
    row_type: pg_sys::Oid,
    alias: &str,
    criteria: &str,
    row: pg_sys::Datum,
    message: &str,
) -> Result<bool> {
    // SAFETY: popped below when evaluation returns.
    let context = unsafe { push_error_context(message) };
    let result = evaluate(row_type, alias, criteria, row);
    // SAFETY: `context` is the entry pushed above; whatever was pushed after it is gone.
    unsafe { pg_sys::error_context_stack = (*context).previous };
    result
}

fn evaluate(
    row_type: pg_sys::Oid,
    alias: &str,
    criteria: &str,
    row: pg_sys::Datum,
) -> Result<bool> {
    let key = (row_type.to_u32(), alias.to_string(), criteria.to_string());
    let plan = match PLANS.with(|plans| plans.borrow().get(&key).copied()) {
        Some(plan) => plan,
        None => {
            let query = criteria_query(criteria, "(SELECT ($1).*)", alias)?;
            let plan = prepare(&query, &mut [row_type])?;
            // SAFETY: a fresh plan; keeping it moves it out of the SPI procedure's memory.
            unsafe { pg_sys::SPI_keepplan(plan) };
            PLANS.with(|plans| plans.borrow_mut().insert(key, plan));
            plan
        }
    };
    let mut values = [row];
    let mut nulls = [b' ' as std::ffi::c_char];
    // SAFETY: a kept plan with one argument of the row type; read-only, at most one row.
    unsafe {
        let status =
            pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_mut_ptr(), true, 1);
        if status != pg_sys::SPI_OK_SELECT as i32 || pg_sys::SPI_processed != 1 {
            return Err(Error::new(
                Kind::Internal,
                "evaluating criteria returned no row",
            ));
        }
        let table = pg_sys::SPI_tuptable;
        let mut is_null = false;
        let value = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut is_null);
        Ok(!is_null && bool::from_datum(value, false).unwrap_or(false))
    }
}

/// Prepares `query` with arguments of `arg_types`; PostgreSQL raises its errors.
fn prepare(query: &CStr, arg_types: &mut [pg_sys::Oid]) -> Result<pg_sys::SPIPlanPtr> {
    // SAFETY: a valid query string and as many argument types as it has arguments.
    let plan = unsafe {
        pg_sys::SPI_prepare(
            query.as_ptr(),
            arg_types.len() as i32,
            arg_types.as_mut_ptr(),
        )
    };
    if plan.is_null() {
        return Err(Error::new(
            Kind::Internal,
            "could not prepare the criteria query",
        ));
    }
    Ok(plan)
}

/// The query evaluating `criteria` over the rows of `from`, named `alias`.
fn criteria_query(criteria: &str, from: &str, alias: &str) -> Result<CString> {
    CString::new(format!("SELECT ({criteria}\n) FROM {from} AS {alias}"))
        .map_err(|_| Error::new(Kind::InvalidParameter, "criteria must not contain NUL"))
}

/// Pushes an error context entry naming outbound message `message`, in the current memory
/// context, and returns it. An ERROR raised while it is pushed unwinds as a Rust panic and is
/// raised again by pgrx's guard of the trigger, which keeps no CONTEXT of the original: the
/// entry is deliberately left pushed while the ERROR unwinds, so that this raise names the
/// message. PostgreSQL's handler of the ERROR then restores the stack it saved.
///
/// # Safety
/// The caller pops it (sets `error_context_stack` to its `previous`) when no ERROR came.
unsafe fn push_error_context(message: &str) -> *mut pg_sys::ErrorContextCallback {
    let name = CString::new(message).unwrap_or_default();
    // SAFETY: palloc'd copies live until the memory context is reset, after the ERROR (if
    // any) was reported.
    unsafe {
        let entry = pg_sys::palloc0(std::mem::size_of::<pg_sys::ErrorContextCallback>())
            as *mut pg_sys::ErrorContextCallback;
        (*entry).previous = pg_sys::error_context_stack;
        (*entry).callback = Some(criteria_context);
        (*entry).arg = pg_sys::pstrdup(name.as_ptr()) as *mut std::ffi::c_void;
        pg_sys::error_context_stack = entry;
        entry
    }
}

unsafe extern "C-unwind" fn criteria_context(arg: *mut std::ffi::c_void) {
    // SAFETY: called by errfinish with the message name `push` registered.
    unsafe {
        pg_sys::set_errcontext_domain(std::ptr::null());
        errcontext_msg(
            c"criteria of outbound message \"%s\"".as_ptr(),
            arg as *const std::ffi::c_char,
        );
    }
}

/// Refuses anything in the analysed query but one boolean, non-volatile expression over its
/// one table; returns the expression.
///
/// # Safety
/// `plan` must be a valid, prepared SPI plan.
unsafe fn inspect(
    plan: pg_sys::SPIPlanPtr,
) -> std::result::Result<*mut pg_sys::Node, &'static str> {
    // SAFETY: plan sources and their query trees live as long as the plan.
    unsafe {
        let sources =
            PgList::<pg_sys::CachedPlanSource>::from_pg(pg_sys::SPI_plan_get_plan_sources(plan));
        if sources.len() != 1 {
            return Err("it must be a single expression");
        }
        let source = sources.get_ptr(0).ok_or("it must be a single expression")?;
        let queries = PgList::<pg_sys::Query>::from_pg((*source).query_list);
        if queries.len() != 1 {
            return Err("it must be a single expression");
        }
        let query = &*queries.get_ptr(0).ok_or("it must be a single expression")?;
        let from = PgList::<pg_sys::Node>::from_pg((*query.jointree).fromlist);
        let single_select = query.commandType == pg_sys::CmdType::CMD_SELECT
            && PgList::<pg_sys::Node>::from_pg(query.rtable).len() == 1
            && from.len() == 1
            && (*query.jointree).quals.is_null()
            && query.setOperations.is_null()
            && query.cteList.is_null()
            && query.groupClause.is_null()
            && query.groupingSets.is_null()
            && query.havingQual.is_null()
            && query.distinctClause.is_null()
            && query.sortClause.is_null()
            && query.limitCount.is_null()
            && query.limitOffset.is_null()
            && query.rowMarks.is_null();
        if !single_select {
            return Err("it must be a single expression over the table's columns");
        }
        if query.hasSubLinks {
            return Err("subqueries are not allowed");
        }
        if query.hasAggs || query.hasWindowFuncs {
            return Err("aggregate and window functions are not allowed");
        }
        if query.hasTargetSRFs {
            return Err("set-returning functions are not allowed");
        }
        let targets = PgList::<pg_sys::TargetEntry>::from_pg(query.targetList);
        if targets.len() != 1 {
            return Err("it must be a single expression");
        }
        let target = targets.get_ptr(0).ok_or("it must be a single expression")?;
        let expr = (*target).expr.cast::<pg_sys::Node>();
        if pg_sys::exprType(expr) != pg_sys::BOOLOID {
            return Err("it must be of type boolean");
        }
        if pg_sys::contain_volatile_functions(expr) {
            return Err("volatile functions are not allowed");
        }
        Ok(expr)
    }
}
