//! `regclass` and `regrole` arguments for the SQL API. Both are an OID on the wire; these
//! newtypes give the functions their proper SQL signature without opening or locking anything.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum};

macro_rules! oid_alias {
    ($name:ident, $sql:literal, $typoid:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub pg_sys::Oid);

        impl FromDatum for $name {
            unsafe fn from_polymorphic_datum(
                datum: pg_sys::Datum,
                is_null: bool,
                typoid: pg_sys::Oid,
            ) -> Option<Self> {
                // SAFETY: the value is an OID-sized by-value datum, as for `oid` itself.
                unsafe { pg_sys::Oid::from_polymorphic_datum(datum, is_null, typoid) }.map($name)
            }
        }

        impl IntoDatum for $name {
            fn into_datum(self) -> Option<pg_sys::Datum> {
                self.0.into_datum()
            }
            fn type_oid() -> pg_sys::Oid {
                $typoid
            }
        }

        // SAFETY: unboxed through `FromDatum` above, exactly as pgrx unboxes `oid`.
        unsafe impl<'fcx> ArgAbi<'fcx> for $name {
            unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                // SAFETY: the caller guarantees the argument's type.
                unsafe { arg.unbox_arg_using_from_datum() }
                    .unwrap_or_else(|| panic!("argument {index} must not be null"))
            }

            unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
                // SAFETY: the caller guarantees the argument's type.
                unsafe { arg.unbox_arg_using_from_datum() }.into()
            }
        }

        // SAFETY: the SQL type named here has the same representation as the Rust value.
        unsafe impl SqlTranslatable for $name {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($name);
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> =
                Ok(SqlMappingRef::literal($sql));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
                Ok(ReturnsRef::One(SqlMappingRef::literal($sql)));
        }
    };
}

oid_alias!(
    RegClass,
    "regclass",
    pg_sys::REGCLASSOID,
    "A table, as a `regclass` argument."
);
oid_alias!(
    RegRole,
    "regrole",
    pg_sys::REGROLEOID,
    "A role, as a `regrole` argument."
);
