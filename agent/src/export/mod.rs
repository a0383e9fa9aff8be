//! Everything that formats metrics or serves HTTP lives here; it only reads
//! state owned elsewhere.

mod agent;
pub mod api;
mod containers;
pub mod http;
pub mod metrics;
mod stats;
