//! What travels on the wire, in pure Rust: SOAP messages and answers, the WSDL, value
//! formats, and Salesforce-style ids.

pub mod ids;
pub mod soap;
pub mod values;
pub mod wsdl;
