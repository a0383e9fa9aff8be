//! What the agent is running with: the modes chosen at start, shown in logs
//! and as `cgscope_mode`.

/// One subsystem and the mode it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub subsystem: &'static str,
    pub active: &'static str,
    /// Every mode the subsystem knows, so dashboards see explicit zeros.
    pub choices: &'static [&'static str],
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub modes: Vec<Mode>,
    /// Names of the attached eBPF programs.
    pub ebpf_programs: Vec<&'static str>,
}

pub const DISCOVERY_MODES: &[&str] = &["ebpf", "inotify"];

pub const COLLECTOR_MODES: &[&str] = &["iter", "files"];
