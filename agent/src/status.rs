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

/// A subsystem's own mode type (`discovery::start::Mode`, …), made by
/// [`subsystem_mode!`] so that its labels are written once.
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

/// Declares a subsystem's mode enum and its [`SubsystemMode`] labels, one
/// line per mode.
macro_rules! subsystem_mode {
    (
        $(#[$meta:meta])*
        pub enum $name:ident in $subsystem:literal {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $crate::status::SubsystemMode for $name {
            const SUBSYSTEM: &'static str = $subsystem;
            const NAMES: &'static [&'static str] = &[$($label),+];
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }
    };
}
pub(crate) use subsystem_mode;

#[cfg(test)]
mod tests {
    use super::*;

    subsystem_mode! {
        pub enum Demo in "demo" {
            A => "a",
            B => "b",
        }
    }

    #[test]
    fn a_mode_and_its_choices_come_from_one_list() {
        let m = Mode::of(Demo::B);
        assert_eq!(
            (m.subsystem, m.active, m.choices),
            ("demo", "b", &["a", "b"][..])
        );
        assert_eq!(Demo::A.name(), "a");
    }
}
