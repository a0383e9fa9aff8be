//! Everything that formats metrics or serves HTTP lives here; it only reads
//! state owned elsewhere.

mod agent;
pub mod api;
mod api_v2;
mod containers;
mod family;
#[cfg(test)]
mod golden;
pub mod http;
pub mod metrics;
pub mod sources;
pub mod state;
mod stats;
