//! The kernel side: load the embedded object, attach its programs, and hand
//! out its maps. Nothing outside this module talks to BPF.

pub mod btf;
pub mod iter;
pub mod layout;
pub mod log;
pub mod oom_layout;
pub mod ring;
pub mod start;
pub mod tracefs;

use std::{io, path::PathBuf};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use thiserror::Error;

use agent_common::names;

use self::tracefs::FormatError;

use crate::{
    errors::Chain,
    telemetry::{Collector, DescriptorEncoder, Family, MetricType},
};

/// The object built by `cargo xtask build-ebpf`; empty when the agent was
/// built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgscope.bpf.o"));

pub fn embedded_object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(
        "this cgscope was built without its eBPF object (build it with `cargo xtask build-ebpf`)"
    )]
    NoObject,
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing")]
    Tracefs(#[source] io::Error),
    #[error("tracepoint {event}")]
    Format {
        event: &'static str,
        #[source]
        source: FormatError,
    },
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "program {name}: kernel.perf_event_paranoid is {paranoid}, and this kernel \
         (Debian's and Ubuntu's patch) then opens tracepoint perf events only with CAP_SYS_ADMIN: \
         set kernel.perf_event_paranoid=2 for eBPF with CAP_BPF and CAP_PERFMON alone"
    )]
    PerfRestricted {
        name: &'static str,
        paranoid: i32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("polling a ring buffer")]
    Poll(#[source] io::Error),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{0}")]
    Unusable(String),
}

/// The loaded object. Dropping it detaches every program.
pub struct Kernel {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    /// `None` when tracefs could not be found or mounted.
    pub tracefs: Option<PathBuf>,
    /// Why a subsystem's programs cannot be used on this kernel, if so.
    cgroup_unusable: Option<String>,
    /// Why the `tp_btf` cgroup programs cannot be used, if so.
    cgroup_btf_unusable: Option<String>,
    oom_btf_unusable: Option<String>,
    oom_tp_unusable: Option<String>,
    /// The kernel's BTF as aya loads programs against it: parsed on the
    /// first program that needs it, dropped by [`Kernel::forget_btf`].
    aya_btf: Option<aya::Btf>,
    /// The programs' debug messages, when wanted.
    logger: Option<log::Logger>,
}

/// How the object is loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Records the cgroup iterator's output holds (0 when it is not used:
    /// its array then takes no memory to speak of).
    pub iter_capacity: u32,
    /// Tests only: the cgroup `tp_btf` programs read the kernfs node at a
    /// wrong offset, so that their reads fail (counted, and logged at debug
    /// level), and the walk must find what they miss.
    pub unreadable_cgroup: bool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("attached", &self.attached)
            .field("tracefs", &self.tracefs)
            .finish_non_exhaustive()
    }
}

/// Raises `RLIMIT_MEMLOCK` for kernels before 5.11, which charge BPF maps
/// against it. Newer kernels charge the memory cgroup instead, so failure
/// (no CAP_SYS_RESOURCE) is only worth a debug line.
pub fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)"
        );
    }
}

/// How the OOM victim is observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomProgram {
    /// `tp_btf/mark_victim`: cgroup ids read in the kernel.
    Btf,
    /// The classic `oom:mark_victim` tracepoint: pid and comm only.
    Tracepoint,
}

impl Kernel {
    /// Loads the embedded object with every layout global taken from this
    /// kernel, with room for `iter_capacity` records in the cgroup
    /// iterator's output (0 when the iterator is not used: its array then
    /// takes no memory to speak of). Programs are attached separately, per
    /// subsystem, so one that cannot work here (a layout that does not
    /// parse) does not take the others down.
    pub fn load(options: LoadOptions) -> Result<Self, EbpfError> {
        let iter_capacity = options.iter_capacity;
        let object = embedded_object().ok_or(EbpfError::NoObject)?;
        // Only the classic tracepoints need tracefs (their formats and
        // ids): without it (a container whose host never mounted it) the
        // tp_btf programs and the iterator still work.
        let tracefs = match tracefs::find_or_mount() {
            Ok((path, mounted)) => {
                if mounted {
                    tracing::info!(path = %path.display(), "mounted tracefs");
                }
                Ok(path)
            }
            Err(e) => Err(Chain(&EbpfError::Tracefs(e)).to_string()),
        };
        let cgroup = tracefs
            .clone()
            .and_then(|t| layout::cgroup_tp(&t).map_err(|e| Chain(&e).to_string()));
        // Parsed once for every layout that needs it, then dropped.
        let kernel_btf = btf::Btf::from_sys();
        let with_btf = || kernel_btf.as_ref().map_err(Clone::clone);
        let cgroup_btf = with_btf().and_then(layout::cgroup_btf);
        let oom_btf = with_btf().and_then(oom_layout::oom_btf);
        let oom_btf_task = with_btf().and_then(oom_layout::mark_victim_passes_task);
        let oom_tp = tracefs.clone().and_then(|t| {
            oom_layout::mark_victim(&t)
                .map_err(|e| format!("tracepoint oom:mark_victim: {}", Chain(&e)))
        });
        let iter = if iter_capacity > 0 {
            let cpus = iter::possible_cpus(std::path::Path::new("/sys")).unwrap_or(0);
            with_btf()
                .and_then(|b| iter::iter_offsets(b, cpus))
                .inspect_err(|e| tracing::warn!(error = %Chain(e), "the cgroup iterator's offsets are not in this kernel's BTF"))
                .ok()
        } else {
            None
        };
        let mut loader = EbpfLoader::new();
        // A layout that did not parse leaves its program's offsets at 0;
        // that program is then not attached (see the `*_unusable` reasons).
        if let Ok(o) = &cgroup {
            loader.override_global(names::CGROUP_TP_OFFSETS, o, true);
        }
        let cgroup_btf = cgroup_btf.map(|mut o| {
            if options.unreadable_cgroup {
                // An int read as the node's pointer: not an address.
                o.kn = o.level;
            }
            o
        });
        if let Ok(o) = &cgroup_btf {
            loader.override_global(names::CGROUP_BTF_OFFSETS, o, true);
        }
        let log_level = log::level();
        loader.override_global(aya_log::LEVEL, &log_level, true);
        if let Ok(o) = &oom_btf {
            loader.override_global(names::OOM_BTF_OFFSETS, o, true);
        }
        if let Ok(o) = &oom_tp {
            loader.override_global(names::OOM_TP_OFFSETS, o, true);
        }
        if let Some(o) = &iter {
            loader.override_global(names::ITER_OFFSETS, o, true);
        }
        loader.map_max_entries(
            names::CGROUP_STATS,
            iter_capacity.clamp(1, agent_common::STATS_CAPACITY) + 1,
        );
        let mut ebpf = loader.load(object)?;
        let logger = match log_level {
            0 => None,
            _ => aya_log::EbpfLogger::init(&mut ebpf)
                .inspect_err(|e| tracing::warn!(error = %Chain(e), "the eBPF programs' log is not available"))
                .ok(),
        };
        Ok(Self {
            ebpf,
            logger,
            attached: Vec::new(),
            tracefs: tracefs.ok(),
            aya_btf: None,
            cgroup_unusable: cgroup.err(),
            cgroup_btf_unusable: cgroup_btf.err().map(|e| format!("kernel BTF: {e}")),
            oom_btf_unusable: oom_btf
                .err()
                .or(oom_btf_task.err())
                .map(|e| format!("kernel BTF: {e}")),
            oom_tp_unusable: oom_tp.err(),
        })
    }

    /// Attaches the cgroup mkdir/rmdir programs: `tp_btf` (no perf event
    /// needed), else (or when `classic`) the classic tracepoints.
    pub fn attach_cgroup(&mut self, classic: bool) -> Result<(), EbpfError> {
        let btf_error = match &self.cgroup_btf_unusable {
            _ if classic => "classic tracepoints asked for".to_owned(),
            Some(why) => why.clone(),
            None => match self.attach_btf_tracepoint(names::CGROUP_MKDIR_BTF, "cgroup_mkdir") {
                // Both or neither: the pair's events share one ring.
                Ok(()) => {
                    return self.attach_btf_tracepoint(names::CGROUP_RMDIR_BTF, "cgroup_rmdir")
                }
                Err(e) => Chain(&e).to_string(),
            },
        };
        if let Some(why) = &self.cgroup_unusable {
            return Err(EbpfError::Unusable(format!("{btf_error}; {why}")));
        }
        tracing::info!(error = %btf_error, "tp_btf/cgroup_mkdir unavailable: using the classic cgroup tracepoints");
        self.attach_tracepoint(names::CGROUP_MKDIR_TP, "cgroup", "cgroup_mkdir")?;
        self.attach_tracepoint(names::CGROUP_RMDIR_TP, "cgroup", "cgroup_rmdir")
    }

    /// Attaches the best OOM program this kernel allows: `tp_btf`, else (or
    /// when `classic`) the classic tracepoint.
    pub fn attach_oom(&mut self, classic: bool) -> Result<OomProgram, EbpfError> {
        let btf_error = match &self.oom_btf_unusable {
            _ if classic => "classic tracepoints asked for".to_owned(),
            Some(why) => why.clone(),
            None => match self.attach_btf_tracepoint(names::MARK_VICTIM_BTF, "mark_victim") {
                Ok(()) => return Ok(OomProgram::Btf),
                Err(e) => Chain(&e).to_string(),
            },
        };
        if let Some(why) = &self.oom_tp_unusable {
            return Err(EbpfError::Unusable(format!("{btf_error}; {why}")));
        }
        tracing::warn!(error = %btf_error, "tp_btf/mark_victim unavailable: using the classic oom:mark_victim tracepoint (victims resolved from /proc)");
        self.attach_tracepoint(names::MARK_VICTIM_TP, "oom", "mark_victim")?;
        Ok(OomProgram::Tracepoint)
    }

    fn attach_btf_tracepoint(&mut self, name: &'static str, event: &str) -> Result<(), EbpfError> {
        let btf = aya_btf(&mut self.aya_btf)?;
        let program = self.ebpf.program_mut(name).ok_or(EbpfError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let tp: &mut BtfTracePoint = program
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })?;
        tp.load(event, btf)
            .map_err(|source| EbpfError::Program { name, source })?;
        tp.attach()
            .map_err(|source| EbpfError::Program { name, source })?;
        self.attached.push(name);
        tracing::info!(program = name, tracepoint = %format!("tp_btf/{event}"), "attached eBPF program");
        Ok(())
    }

    /// Loads the tracepoint program `name` and attaches it to `group/event`
    /// (through perf_event_open, unlike the `tp_btf` programs).
    fn attach_tracepoint(
        &mut self,
        name: &'static str,
        group: &str,
        event: &str,
    ) -> Result<(), EbpfError> {
        let program = self.ebpf.program_mut(name).ok_or(EbpfError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let tp: &mut TracePoint = program
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })?;
        tp.load()
            .map_err(|source| EbpfError::Program { name, source })?;
        tp.attach(group, event).map_err(|source| {
            // Above 2 is a distribution patch (upstream stops at 2).
            match perf_event_paranoid() {
                Some(paranoid) if paranoid > 2 => EbpfError::PerfRestricted {
                    name,
                    paranoid,
                    source,
                },
                _ => EbpfError::Program { name, source },
            }
        })?;
        self.attached.push(name);
        tracing::info!(program = name, tracepoint = %format!("{group}:{event}"), "attached eBPF program");
        Ok(())
    }

    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Every program is loaded: the parsed BTF (megabytes) can go.
    /// The programs' debug messages, to forward (once).
    pub fn take_logger(&mut self) -> Option<log::Logger> {
        self.logger.take()
    }

    /// Every subsystem has attached what it wanted: the BTF is dropped and
    /// the programs' counters are handed out.
    pub fn loaded(&mut self) -> Result<KernelCounters, EbpfError> {
        self.forget_btf();
        self.take_counters()
    }

    fn forget_btf(&mut self) {
        self.aya_btf = None;
    }
}

/// The kernel's BTF for loading programs, parsed into `slot` once.
fn aya_btf(slot: &mut Option<aya::Btf>) -> Result<&aya::Btf, EbpfError> {
    let btf = match slot.take() {
        Some(btf) => btf,
        None => aya::Btf::from_sys_fs()
            .map_err(|e| EbpfError::Unusable(format!("kernel BTF: {}", Chain(&e))))?,
    };
    Ok(slot.insert(btf))
}

impl Kernel {
    pub fn take_ring_buf(&mut self, name: &'static str) -> Result<RingBuf<MapData>, EbpfError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(EbpfError::MissingMap(name))?;
        RingBuf::try_from(map).map_err(|source| EbpfError::Map { name, source })
    }

    /// The per-CPU event counters every program bumps.
    fn take_counters(&mut self) -> Result<KernelCounters, EbpfError> {
        const NAME: &str = names::COUNTERS;
        let map = self
            .ebpf
            .take_map(NAME)
            .ok_or(EbpfError::MissingMap(NAME))?;
        let map =
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { name: NAME, source })?;
        Ok(KernelCounters(std::sync::Mutex::new(map)))
    }
}

/// The kernel side's counters (`agent_common::counter`), read at scrape time.
pub struct KernelCounters(std::sync::Mutex<PerCpuArray<MapData, u64>>);

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl KernelCounters {
    /// The sum over CPUs of counter `index`; `None` if the map read failed.
    pub fn get(&self, index: u32) -> Option<u64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&index, 0).ok().map(|v| v.iter().sum())
    }
}

/// The programs' own counters, read from their map at each scrape.
impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use agent_common::counter;
        /// (name, help, label, [(its value, the counter's index)]).
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            &'static [(&'static str, u32)],
        );
        let families: [Row; 3] = [
            (
                "cgscope_ebpf_events",
                "Tracepoint hits counted by the eBPF programs themselves (compare cgscope_oom_kills_total and the discovery events to see what the agent got).",
                "program",
                &[
                    ("cgroup_mkdir", counter::MKDIR_EVENTS),
                    ("cgroup_rmdir", counter::RMDIR_EVENTS),
                    ("mark_victim", counter::OOM_EVENTS),
                ],
            ),
            (
                "cgscope_ebpf_ringbuf_drops",
                "Events lost in the kernel because a ring buffer was full. A lost cgroup event is repaired by the next walk; a lost OOM kill still counts in container_oom_events_total through the cgroup's own kernel counter (cgscope_oom_missed_total), but its pid and name are gone.",
                "ringbuf",
                &[
                    ("cgroup_events", counter::CGROUP_RINGBUF_DROPS),
                    ("oom_events", counter::OOM_RINGBUF_DROPS),
                ],
            ),
            (
                "cgscope_ebpf_read_errors",
                "Tracepoint records the eBPF programs could not read.",
                "program",
                &[
                    ("cgroup", counter::CGROUP_READ_ERRORS),
                    ("mark_victim", counter::OOM_READ_ERRORS),
                ],
            ),
        ];
        for (name, help, label, rows) in families {
            let mut family = Family::new(&mut encoder, name, help, None, MetricType::Counter)?;
            for &(value, index) in rows {
                if let Some(v) = self.get(index) {
                    family.counter(&[(label, value)], v)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if !self.attached.is_empty() {
            tracing::info!(programs = ?self.attached, "detaching eBPF programs");
        }
    }
}

/// `kernel.perf_event_paranoid`, if readable.
fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}
