//! The kernel side: load the embedded object, attach its programs, and hand
//! out its maps. Nothing outside this module talks to BPF.

pub mod layout;
pub mod tracefs;

use std::{io, path::PathBuf};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use thiserror::Error;

use self::{layout::CgroupLayout, tracefs::FormatError};

/// The object built by `cargo xtask build-ebpf`; empty when the agent was
/// built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgscope.bpf.o"));

/// Ring buffer for cgroup mkdir/rmdir events. 8 MiB hold about 7,900 events,
/// enough for a burst of 800 containers created in all ten v1 hierarchies.
pub const CGROUP_RINGBUF_BYTES: u32 = 8 << 20;

pub fn embedded_object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}

#[derive(Debug, Error)]
pub enum EbpfError {
    #[error(
        "this cgscope was built without its eBPF object (build it with `cargo xtask build-ebpf`)"
    )]
    NoObject,
    #[error("tracefs is not mounted and could not be mounted at /sys/kernel/tracing: {0}")]
    Tracefs(#[source] io::Error),
    #[error("tracepoint {event}: {source}")]
    Format {
        event: &'static str,
        #[source]
        source: FormatError,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
}

/// The loaded object. Dropping it detaches every program.
pub struct Kernel {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    pub tracefs: PathBuf,
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

impl Kernel {
    /// Loads the embedded object with every layout global taken from this
    /// kernel. Programs are loaded and attached separately, per subsystem,
    /// so one that fails does not take the others down.
    pub fn load() -> Result<Self, EbpfError> {
        let object = embedded_object().ok_or(EbpfError::NoObject)?;
        let (tracefs, mounted) = tracefs::find_or_mount().map_err(EbpfError::Tracefs)?;
        if mounted {
            tracing::info!(path = %tracefs.display(), "mounted tracefs");
        }
        let cgroup = CgroupLayout::read(&tracefs)?;
        let mut loader = EbpfLoader::new();
        let globals = cgroup.globals();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        loader.map_max_entries("CGROUP_EVENTS", CGROUP_RINGBUF_BYTES);
        let ebpf = loader.load(object)?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            tracefs,
        })
    }

    /// Loads the tracepoint program `name` and attaches it to `group/event`.
    pub fn attach_tracepoint(
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
        tp.attach(group, event)
            .map_err(|source| EbpfError::Program { name, source })?;
        self.attached.push(name);
        tracing::info!(program = name, tracepoint = %format!("{group}:{event}"), "attached eBPF program");
        Ok(())
    }

    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }
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
    pub fn take_counters(&mut self) -> Result<KernelCounters, EbpfError> {
        const NAME: &str = "COUNTERS";
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

impl Drop for Kernel {
    fn drop(&mut self) {
        if !self.attached.is_empty() {
            tracing::info!(programs = ?self.attached, "detaching eBPF programs");
        }
    }
}
