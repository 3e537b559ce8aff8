//! PostgreSQL functions declared here without pgrx's error guard (a `sigsetjmp` per call): the
//! capture path calls them for every row, where that guard costs as much as a small call.
//!
//! The first group only reads or sets backend state and cannot raise an ERROR: call them
//! anywhere. The second group may raise one: call them only inside [`boundary`], which
//! catches an ERROR once for a whole stretch of such calls.

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    /// The current subtransaction.
    pub fn GetCurrentSubTransactionId() -> pg_sys::SubTransactionId;
    pub fn GetCurrentTransactionStartTimestamp() -> pg_sys::TimestampTz;
    pub fn GetUserIdAndSecContext(userid: *mut pg_sys::Oid, sec_context: *mut std::ffi::c_int);
    pub fn SetUserIdAndSecContext(userid: pg_sys::Oid, sec_context: std::ffi::c_int);
    /// Splits a tuple into values and nulls (reads only; missing attributes get their
    /// defaults, which the descriptor holds).
    pub fn heap_deform_tuple(
        tuple: pg_sys::HeapTuple,
        desc: pg_sys::TupleDesc,
        values: *mut pg_sys::Datum,
        isnull: *mut bool,
    );
}

/// PostgreSQL's own implementations behind two hooks of ours, called without a guard so that an
/// ERROR they raise passes through the hook unchanged (a guard would turn it into a Rust panic
/// and raise it again: a copy without its table or constraint fields, and with a Rust
/// backtrace). Call them only from frames that need no dropping.
pub mod passing {
    use pgrx::pg_sys;

    unsafe extern "C-unwind" {
        pub fn standard_ExecutorFinish(query: *mut pg_sys::QueryDesc);
        #[allow(clippy::too_many_arguments)]
        pub fn standard_ProcessUtility(
            statement: *mut pg_sys::PlannedStmt,
            query: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            environment: *mut pg_sys::QueryEnvironment,
            destination: *mut pg_sys::DestReceiver,
            completion: *mut pg_sys::QueryCompletion,
        );
    }
}

/// May raise an ERROR: only inside [`boundary`].
pub mod raising {
    use pgrx::pg_sys;

    unsafe extern "C-unwind" {
        pub fn palloc(size: pg_sys::Size) -> *mut std::ffi::c_void;
        pub fn MemoryContextReset(context: pg_sys::MemoryContext);
        pub fn cstring_to_text_with_len(
            s: *const std::ffi::c_char,
            len: std::ffi::c_int,
        ) -> *mut pg_sys::text;
        pub fn construct_empty_array(elmtype: pg_sys::Oid) -> *mut pg_sys::ArrayType;
        pub fn GetCurrentCommandId(used: bool) -> pg_sys::CommandId;
        pub fn heap_form_tuple(
            desc: pg_sys::TupleDesc,
            values: *mut pg_sys::Datum,
            isnull: *mut bool,
        ) -> pg_sys::HeapTuple;
        pub fn heap_insert(
            relation: pg_sys::Relation,
            tuple: pg_sys::HeapTuple,
            cid: pg_sys::CommandId,
            options: std::ffi::c_int,
            bistate: pg_sys::BulkInsertState,
        );
    }
}

/// Runs `f`, which calls functions of [`raising`], under one error guard: an ERROR raised in
/// `f` jumps back here and continues as a Rust panic, as it would from a guarded call.
///
/// # Safety
/// Nothing in `f`'s own frames may need dropping (an ERROR skips them), and `f` must not
/// panic. Keep it to raw pointers, integers, borrowed slices and calls to C.
pub unsafe fn boundary<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: as the caller guarantees.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(f) }
}
