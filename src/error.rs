//! The one error type of the SQL API. Each kind carries its SQLSTATE; [`Error::report`] raises it
//! as a PostgreSQL ERROR with message, DETAIL and HINT in PostgreSQL's style.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// What went wrong, as a SQLSTATE class a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 22023: a parameter value is not acceptable.
    InvalidParameter,
    /// 42P01: the table does not exist or is not usable.
    UndefinedTable,
    /// 42703: a column does not exist.
    UndefinedColumn,
    /// 42701: a column is listed twice.
    DuplicateColumn,
    /// 42704: a message or role does not exist.
    UndefinedObject,
    /// 42710: a message of that unique name already exists on the table.
    DuplicateObject,
    /// 42809: the relation is of the wrong kind (a view, a temporary table).
    WrongObjectType,
    /// 42501: the caller or the send-as role lacks a privilege.
    InsufficientPrivilege,
    /// 55000: the message is not in a state that allows the operation.
    ObjectNotInPrerequisiteState,
    /// 2BP01: something still uses the object.
    DependentObjectsStillExist,
    /// 42P16: the table cannot carry an outbound message (no usable primary key).
    InvalidTableDefinition,
    /// 22004: a required argument, or an element of an array argument, is NULL.
    NullValueNotAllowed,
    /// 0A000: a setting this version does not support yet.
    FeatureNotSupported,
    /// XX000: a failure that is our bug, not the caller's.
    Internal,
}

impl Kind {
    fn sqlstate(self) -> PgSqlErrorCode {
        match self {
            Kind::InvalidParameter => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            Kind::UndefinedTable => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            Kind::UndefinedColumn => PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            Kind::DuplicateColumn => PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
            Kind::UndefinedObject => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            Kind::DuplicateObject => PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            Kind::WrongObjectType => PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            Kind::InsufficientPrivilege => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            Kind::DependentObjectsStillExist => {
                PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
            }
            Kind::ObjectNotInPrerequisiteState => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            Kind::InvalidTableDefinition => PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
            Kind::FeatureNotSupported => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            Kind::NullValueNotAllowed => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Kind::Internal => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }
}

/// An error of the SQL API: a kind, a message naming the offending value, and optional detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Result of the SQL API's internals.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Error {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// Raises this error as a PostgreSQL ERROR; does not return.
    pub fn report(self) -> ! {
        ErrorReport::from(self).report(PgLogLevel::ERROR);
        unreachable!("an ERROR report returned")
    }
}

impl From<Error> for ErrorReport {
    fn from(error: Error) -> ErrorReport {
        let mut report = ErrorReport::new(error.kind.sqlstate(), error.message, "outbound_msg");
        if let Some(detail) = error.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = error.hint {
            report = report.set_hint(hint);
        }
        report
    }
}

/// The value of the required parameter `name`: NULL is an error naming it.
pub fn required<T>(value: Option<T>, name: &str) -> Result<T> {
    value.ok_or_else(|| {
        Error::new(
            Kind::NullValueNotAllowed,
            format!("{name} must not be null"),
        )
    })
}

/// The `object` and `unique_name` parameters that name a message, neither of which may be NULL.
pub fn required_message<T>(object: Option<T>, unique_name: Option<&str>) -> Result<(T, &str)> {
    Ok((
        required(object, "object")?,
        required(unique_name, "unique_name")?,
    ))
}

/// The elements of the array parameter `name`, none of which may be NULL.
pub fn required_elements<T>(values: Option<Vec<Option<T>>>, name: &str) -> Result<Vec<T>> {
    required(values, name)?
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| {
            Error::new(
                Kind::NullValueNotAllowed,
                format!("{name} must not contain null elements"),
            )
        })
}

impl From<pgrx::spi::Error> for Error {
    fn from(error: pgrx::spi::Error) -> Error {
        Error::new(
            Kind::Internal,
            format!("outbound_msg internal query failed: {error}"),
        )
    }
}
