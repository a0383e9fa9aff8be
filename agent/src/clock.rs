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

/// RFC 3339 with nanoseconds, for any time: one before 1970 (a clock set
/// wrong, a kernel timestamp read against a boot time that stepped) is
/// written as the epoch and one past 9999 as the last instant of that year,
/// where the formatter would panic.
pub fn rfc3339(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999999999Z.
    let last = SystemTime::UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999);
    let t = t.clamp(SystemTime::UNIX_EPOCH, last);
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_formats() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(rfc3339(epoch), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(epoch - Duration::from_secs(86_400)),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(epoch + Duration::from_secs(400_000_000_000)),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            rfc3339(epoch + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20.000000000Z"
        );
    }
}
