//! Capabilities dropped once the agent has started: loading and attaching
//! eBPF programs, raising the memlock limit, opening `/dev/kmsg` and
//! mounting tracefs happen at start; what runs after only reads. The agent
//! keeps what its reads need and nothing else, for the life of the process
//! (a permitted capability dropped cannot come back; the agent never execs).
//!
//! Capabilities belong to each thread, and `capset(2)` changes only the
//! caller's. Threads already running (the runtime's, the collector's, the
//! kernel-log reader's) are each made to call it from a signal handler, as
//! glibc does for `setuid(2)` and Go for `AllThreadsSyscall`; then every
//! thread's `/proc/self/task/<tid>/status` is checked.

use std::{
    fs, io,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The capabilities the agent uses, by number (`linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Other users' `/proc/<pid>/fd`, `limits`, `ns/net`.
    SysPtrace = 19,
    /// Files under `/proc` and `/sys` root cannot read by their modes.
    DacReadSearch = 2,
    /// `bpf(2)`: the cgroup iterator's runs and the programs' counters.
    Bpf = 39,
}

impl Cap {
    fn name(self) -> &'static str {
        match self {
            Self::SysPtrace => "CAP_SYS_PTRACE",
            Self::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Self::Bpf => "CAP_BPF",
        }
    }
}

/// A capability set as the kernel writes it (`CapEff:` in status).
pub type CapSet = u64;

/// The set of `caps`.
pub fn set_of(caps: &[Cap]) -> CapSet {
    caps.iter().fold(0, |s, c| s | 1 << *c as u32)
}

/// Names of the capabilities in `set` that are among `caps`.
pub fn names(set: CapSet, caps: &[Cap]) -> Vec<&'static str> {
    caps.iter()
        .filter(|c| set & set_of(&[**c]) != 0)
        .map(|c| c.name())
        .collect()
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's permitted set.
fn permitted() -> io::Result<CapSet> {
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and the two data structs it asks for.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | u64::from(data[1].permitted) << 32)
}

/// The set every thread is to have, for the signal handler (which can
/// touch nothing else).
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Handler calls that failed.
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Sets the calling thread's effective and permitted sets to `set`, its
/// inheritable (and so ambient) set to nothing. Only a raw system call:
/// this also runs in a signal handler.
fn capset_this_thread(set: CapSet) -> bool {
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let (low, high) = (set as u32, (set >> 32) as u32);
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: a version-3 header and two data structs.
    unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) == 0 }
}

extern "C" fn on_signal(_: libc::c_int) {
    let errno = io::Error::last_os_error().raw_os_error();
    if !capset_this_thread(TARGET.load(Ordering::SeqCst)) {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    // The interrupted code may read errno after the handler returns.
    if let Some(e) = errno {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = e };
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("reading the capabilities: {0}")]
    Read(#[source] io::Error),
    #[error("setting the capabilities: {0}")]
    Set(#[source] io::Error),
    #[error("installing the signal handler: {0}")]
    Handler(#[source] io::Error),
    #[error("thread {tid} still has capabilities {have:#x} (wanted {want:#x})")]
    Thread {
        tid: u32,
        have: CapSet,
        want: CapSet,
    },
}

/// Drops what the started agent no longer uses, and says what it kept.
/// `ebpf`: programs are loaded (their counters and the iterator go on
/// calling `bpf(2)`). A failure leaves the agent running, as privileged as
/// it started, with an error in its log.
pub fn drop_after_start(ebpf: bool) {
    let mut keep = vec![Cap::SysPtrace, Cap::DacReadSearch];
    if ebpf {
        keep.push(Cap::Bpf);
    }
    match keep_only(&keep) {
        Ok(kept) => {
            tracing::info!(kept = ?names(kept, &keep), "every other capability dropped")
        }
        Err(e) => {
            tracing::error!(error = %crate::errors::Chain(&e), "dropping capabilities failed")
        }
    }
}

/// Leaves every thread of the process with `keep` (those of it the
/// process has); returns the set kept.
pub fn keep_only(keep: &[Cap]) -> Result<CapSet, DropError> {
    let want = set_of(keep) & permitted().map_err(DropError::Read)?;
    TARGET.store(want, Ordering::SeqCst);
    let signal = libc::SIGRTMIN() + 6;
    // SAFETY: a handler that makes only async-signal-safe system calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(DropError::Handler(io::Error::last_os_error()));
        }
    }
    let result = all_threads(want, signal);
    // A late copy of the signal must not end the process.
    // SAFETY: ignoring a real-time signal.
    unsafe { libc::signal(signal, libc::SIG_IGN) };
    result.map(|()| want)
}

fn all_threads(want: CapSet, signal: libc::c_int) -> Result<(), DropError> {
    if !capset_this_thread(want) {
        return Err(DropError::Set(io::Error::last_os_error()));
    }
    // SAFETY: plain system calls.
    let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid)) };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // A thread started meanwhile by one not yet dropped inherits its
        // set: listed again until every one shows the target.
        let mut behind = None;
        for tid in threads() {
            let have = effective_and_permitted(tid);
            if have.is_none_or(|(e, p)| e == want && p == want) {
                continue;
            }
            behind = Some((tid, have.map_or(0, |(e, p)| e | p)));
            if tid != me as u32 {
                // SAFETY: a signal to a thread of this process.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
            }
        }
        let Some((tid, have)) = behind else {
            return Ok(());
        };
        if Instant::now() > deadline || FAILED.load(Ordering::SeqCst) > 0 {
            return Err(DropError::Thread { tid, have, want });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn threads() -> Vec<u32> {
    fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `CapEff` and `CapPrm` of a thread; `None` once it has exited.
fn effective_and_permitted(tid: u32) -> Option<(CapSet, CapSet)> {
    let status = fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    Some((field(&status, "CapEff:")?, field(&status, "CapPrm:")?))
}

/// A hexadecimal capability set of `/proc/<pid>/status`.
pub fn field(status: &str, name: &str) -> Option<CapSet> {
    let line = status.lines().find_map(|l| l.strip_prefix(name))?;
    CapSet::from_str_radix(line.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_names() {
        let s = set_of(&[Cap::Bpf, Cap::DacReadSearch]);
        assert_eq!(s, 1 << 39 | 1 << 2);
        assert_eq!(
            names(s, &[Cap::SysPtrace, Cap::DacReadSearch, Cap::Bpf]),
            ["CAP_DAC_READ_SEARCH", "CAP_BPF"]
        );
        let status = "Name:\tcgscope\nCapInh:\t0000000000000000\nCapPrm:\t000000800008000c\nCapEff:\t000000800008000c\n";
        assert_eq!(field(status, "CapEff:"), Some(0x0000_0080_0008_000c));
        assert_eq!(field(status, "CapInh:"), Some(0));
        assert_eq!(field(status, "CapAmb:"), None);
    }
}
