//! Capture: the row trigger and `send()` (trigger), the rendering of column values
//! (encode), and the statement buffer that writes rendered rows to the queue when a statement
//! ends (statement).

pub mod encode;
pub mod statement;
pub mod trigger;
