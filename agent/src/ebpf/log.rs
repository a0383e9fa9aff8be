//! The eBPF programs' debug messages (aya-log: a read that failed, at which
//! offset), forwarded into the agent's log under [`TARGET`] at debug level.
//! Off unless that target's debug level is on (`--log-level
//! info,cgscope::bpf_programs=debug`): the programs then skip the messages
//! (the verifier drops the branch) and nothing is read.

use std::panic::AssertUnwindSafe;

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};

/// The `target` of the programs' messages (`debug!(ctx, target: …)` in
/// agent-ebpf).
pub const TARGET: &str = agent_common::names::LOG_TARGET;

pub type Logger = EbpfLogger<&'static dyn log::Log>;

/// Whether the programs' debug messages are wanted.
pub fn wanted() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// The `AYA_LOG_LEVEL` the programs are loaded with.
pub fn level() -> u8 {
    if wanted() {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Forwards messages as they come, for the life of the agent.
pub async fn forward(logger: Logger) {
    // SAFETY: the logger owns its ring buffer's fd for as long as the
    // AsyncFd lives.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the eBPF programs' log; their debug messages are not shown");
            return std::future::pending().await;
        }
    };
    let mut broken = false;
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return std::future::pending().await;
        };
        // aya-log panics on a record it cannot decode: a debugging aid must
        // not take the agent down with it.
        let flushed = std::panic::catch_unwind(AssertUnwindSafe(|| guard.get_inner_mut().flush()));
        if flushed.is_err() && !broken {
            broken = true;
            tracing::warn!("an eBPF log record could not be decoded; further ones are skipped");
        }
        guard.clear_ready();
    }
}
