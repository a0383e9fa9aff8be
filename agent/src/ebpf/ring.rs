//! Reading a BPF ring buffer from the reactor: one wake-up, one batch of
//! every record that is there.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd
        // lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Waits for records, then hands each one there to `f`, keeping what
    /// it returns.
    pub async fn next_batch<T>(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let mut guard = self.fd.readable_mut().await?;
        let mut out = Vec::new();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.extend(f(&item));
        }
        guard.clear_ready();
        Ok(out)
    }
}
