//! Everything that formats metrics or serves HTTP lives here; it only reads
//! state owned elsewhere.

pub mod http;
pub mod metrics;
