//! The conformance suite on the in-memory adapter, the reference the others must match.

crate::conformance::suite!(crate::support::Backend::Memory);
