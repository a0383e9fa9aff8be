//! The allocator, tuned for a long-lived agent whose big buffers are short-lived.

/// Buffers of a scrape or an iterator pass (hundreds of KiB to MiB, freed
/// soon after) are mapped and unmapped rather than kept in malloc's arenas:
/// glibc otherwise raises its mmap threshold after the first such free and
/// each blocking thread's arena keeps its own copies (+20 MiB at 5,000
/// containers with the iterator).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt with a documented parameter, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Loading BPF parses the kernel's BTF (megabytes) and the first walk lists
/// every cgroup; glibc keeps such freed memory unless asked to return it.
pub fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
