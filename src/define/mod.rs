//! Definitions: outbound messages (their catalog and SQL API), the rules each setting obeys,
//! criteria, and client certificates.

pub mod catalog;
pub mod certificates;
pub mod criteria;
pub mod validate;
