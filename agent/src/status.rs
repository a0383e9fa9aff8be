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

impl Mode {
    pub fn of<M: SubsystemMode>(mode: M) -> Self {
        Self {
            subsystem: M::SUBSYSTEM,
            active: mode.name(),
            choices: M::NAMES,
        }
    }
}

/// A subsystem's own mode type (`discovery::Mode`, …).
pub trait SubsystemMode: Copy {
    /// The `subsystem` label.
    const SUBSYSTEM: &'static str;
    /// Every mode's `mode` label.
    const NAMES: &'static [&'static str];
    fn name(self) -> &'static str;
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub modes: Vec<Mode>,
    /// Names of the attached eBPF programs.
    pub ebpf_programs: Vec<&'static str>,
}
