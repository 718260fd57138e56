//! Hit/no-hit matching: identifiers are canonicalised and blinded by agencies
//! ([`identifiers`]), and published, withdrawn and queried blinded ([`service`]).

pub mod identifiers;
pub(crate) mod service;
