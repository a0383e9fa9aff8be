//! Kernel clocks in wall-clock time: the kernel stamps events with
//! CLOCK_BOOTTIME (nanoseconds since boot), users read dates.

use std::time::{Duration, SystemTime};

/// Wall-clock time of boot, from CLOCK_BOOTTIME.
pub fn boot_time() -> Option<SystemTime> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    SystemTime::now().checked_sub(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Turns kernel boot-clock nanoseconds into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    boot: SystemTime,
}

impl BootClock {
    /// The boot time as read now (a clock step moves it; read it again for
    /// each batch of events).
    pub fn now() -> Self {
        Self::booted_at(boot_time().unwrap_or(SystemTime::UNIX_EPOCH))
    }

    pub fn booted_at(boot: SystemTime) -> Self {
        Self { boot }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(boot_ns)
    }
}
