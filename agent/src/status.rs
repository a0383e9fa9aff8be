//! What the agent is running with: the modes chosen at start, shown in logs
//! and as `cgscope_mode`.

use crate::{
    supervise::Health,
    telemetry::{Collector, DescriptorEncoder, Family, Gauge, Labels, MetricType, Metrics, Series},
};

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
    /// A subsystem whose source is down (restarting) runs in no mode.
    pub health: Health,
}

impl Status {
    /// Exports what the agent runs with (fixed from here on).
    pub fn register(&self, m: &mut Metrics) {
        let build = Series::<Labels<2>, Gauge>::default();
        let ebpf = if crate::ebpf::embedded_object().is_some() {
            "true"
        } else {
            "false"
        };
        build
            .get_or_create(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("ebpf_object", ebpf),
            ])
            .set(1);
        m.register(
            "cgscope_build_info",
            "A metric with a constant '1' value labeled by version and whether the eBPF object is embedded",
            build,
        );
        m.register_collector(Box::new(Modes {
            modes: self.modes.clone(),
            health: self.health.clone(),
        }));
        let programs = Gauge::<i64>::default();
        programs.set(self.ebpf_programs.len() as i64);
        m.register(
            "cgscope_ebpf_programs_attached",
            "Number of eBPF programs the agent has attached",
            programs,
        );
    }
}

/// `cgscope_mode`, read at each scrape: a subsystem whose source is down
/// while it restarts has every mode at 0.
#[derive(Debug)]
struct Modes {
    modes: Vec<Mode>,
    health: Health,
}

impl Collector for Modes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut family = Family::new(
            &mut encoder,
            "cgscope_mode",
            "1 for the mode each subsystem runs in, 0 for the modes it could run in but does not (all 0 while its source is down and restarting).",
            None,
            MetricType::Gauge,
        )?;
        for mode in &self.modes {
            let up = !self.health.is_down(mode.subsystem);
            for choice in mode.choices {
                let on = up && *choice == mode.active;
                family.gauge(
                    &[("subsystem", mode.subsystem), ("mode", choice)],
                    i64::from(on),
                )?;
            }
        }
        Ok(())
    }
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

    #[test]
    fn every_choice_is_exported_the_active_one_at_1() {
        let status = Status {
            modes: vec![Mode::of(Demo::B)],
            ebpf_programs: vec!["cgroup_mkdir"],
            health: Health::default(),
        };
        let mut m = Metrics::default();
        status.register(&mut m);
        let text = |m: &Metrics| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, m).unwrap();
            out
        };
        let out = text(&m);
        for line in [
            "cgscope_mode{subsystem=\"demo\",mode=\"a\"} 0\n",
            "cgscope_mode{subsystem=\"demo\",mode=\"b\"} 1\n",
            "cgscope_ebpf_programs_attached 1\n",
            "# HELP cgscope_ebpf_programs_attached Number of eBPF programs the agent has attached.\n",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        // Its source down: no mode at 1 until it is back.
        status.health.down("demo", "gone".into());
        assert!(text(&m).contains("cgscope_mode{subsystem=\"demo\",mode=\"b\"} 0\n"));
        status.health.up("demo");
        assert!(text(&m).contains("cgscope_mode{subsystem=\"demo\",mode=\"b\"} 1\n"));
    }
}
