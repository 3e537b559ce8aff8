//! Evaluation criteria: a SQL boolean expression over a table's columns, evaluated on a row.
//!
//! The expression is embedded in one fixed query, `SELECT (<criteria>\n) FROM (SELECT ($1).*)
//! AS <table>`, with the row passed as `$1`. The same text is analysed when a message is defined
//! ([`check`]) and run at capture ([`holds`]), and the analysis refuses anything but a single
//! boolean expression over that one row: no other relation, no subquery, no set operation, no
//! aggregate, no volatile function. The newline before the closing parenthesis ends any `--`
//! comment the expression might open.
//!
//! Prepared plans are kept per backend, keyed by the row's table and the expression's text, so
//! an altered criteria or table gets its own plan; PostgreSQL replans them when the table changes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::prelude::*;
use pgrx::PgList;

use crate::error::{Error, Kind, Result};

thread_local! {
    /// Kept plans by (row type OID, alias, criteria text).
    static PLANS: RefCell<HashMap<(u32, String, String), pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// Checks that `criteria` is a boolean expression over the columns of table `relid`, usable as
/// evaluation criteria. Must run inside an SPI connection. Syntax errors and unknown columns are
/// raised by PostgreSQL's parser with its own SQLSTATE.
pub fn check(relid: pg_sys::Oid, criteria: &str) -> Result<()> {
    if criteria.trim().is_empty() {
        return Err(
            Error::new(Kind::InvalidParameter, "criteria must not be empty")
                .with_hint("Omit criteria (NULL) to capture every row."),
        );
    }
    let (alias, row_type) = Spi::get_two_with_args::<String, pg_sys::Oid>(
        "SELECT quote_ident(relname), reltype FROM pg_catalog.pg_class WHERE oid = $1",
        &[relid.into()],
    )?;
    let (Some(alias), Some(row_type)) = (alias, row_type) else {
        return Err(Error::new(
            Kind::UndefinedTable,
            "table of the criteria does not exist",
        ));
    };
    let plan = prepare(row_type, &alias, criteria)?;
    // SAFETY: `plan` was just prepared and is not kept; freed here whatever the outcome.
    let outcome = unsafe { inspect(plan) };
    unsafe { pg_sys::SPI_freeplan(plan) };
    outcome.map_err(|reason| {
        Error::new(
            Kind::InvalidParameter,
            format!("invalid criteria \"{criteria}\": {reason}"),
        )
    })
}

/// Whether `criteria` holds for `row`, a composite datum of type `row_type` (the row type of
/// the message's table, or of one of its partitions), named `alias` in the criteria. NULL does
/// not hold. Must run inside an SPI connection.
pub fn holds(
    row_type: pg_sys::Oid,
    alias: &str,
    criteria: &str,
    row: pg_sys::Datum,
) -> Result<bool> {
    let key = (row_type.to_u32(), alias.to_string(), criteria.to_string());
    let plan = match PLANS.with(|plans| plans.borrow().get(&key).copied()) {
        Some(plan) => plan,
        None => {
            let plan = prepare(row_type, alias, criteria)?;
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

/// Prepares the criteria query for rows of type `row_type`, named `alias`.
fn prepare(row_type: pg_sys::Oid, alias: &str, criteria: &str) -> Result<pg_sys::SPIPlanPtr> {
    let query = format!("SELECT ({criteria}\n) FROM (SELECT ($1).*) AS {alias}");
    let query = CString::new(query)
        .map_err(|_| Error::new(Kind::InvalidParameter, "criteria must not contain NUL"))?;
    let mut arg_types = [row_type];
    // SAFETY: a valid query string and one argument type; errors are raised by PostgreSQL.
    let plan = unsafe { pg_sys::SPI_prepare(query.as_ptr(), 1, arg_types.as_mut_ptr()) };
    if plan.is_null() {
        return Err(Error::new(
            Kind::Internal,
            "could not prepare the criteria query",
        ));
    }
    Ok(plan)
}

/// Refuses anything in the analysed query but one boolean, non-volatile expression over `$1`.
///
/// # Safety
/// `plan` must be a valid, prepared SPI plan.
unsafe fn inspect(plan: pg_sys::SPIPlanPtr) -> std::result::Result<(), &'static str> {
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
        Ok(())
    }
}
