//! Gives memory the allocator keeps but no longer uses back to the operating system.
//!
//! glibc's malloc returns freed memory to the system only from the top of each arena, and only
//! past a threshold; the rest stays resident until the same arena reuses it. A replica's
//! allocations come in bursts (a flood of submits, a snapshot build or install, a retention
//! sweep) on whichever threads served them, so after a burst much of its resident memory is
//! free memory held by arenas. Measured (`scaleout bench capacity --jobs 30000`, 68,000 jobs
//! submitted while a follower was down): replicas held 336–393 MiB, of which `malloc_trim`
//! gave back 80–150 MiB; a restarted replica with the same state held 153–170 MiB. mimalloc
//! instead of glibc's malloc held less after the burst but 60–70 MiB more at rest, so the
//! replica keeps the system allocator and trims it: after a snapshot install and every
//! [`TRIM_EVERY`].

use std::time::Duration;

/// How often a replica hands free memory back. A trim walks every arena's free chunks, each
/// arena locked while it is walked, so allocations on it wait; how long that takes on a loaded
/// replica's heap is not measured yet.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hands the memory malloc holds free back to the operating system; returns whether any was.
/// A no-op (false) where the allocator is not glibc's.
pub fn return_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only walks malloc's own arenas, under their
        // locks; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// What malloc holds, in bytes: in use by the program, and free but kept (not yet handed back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUse {
    pub in_use: u64,
    pub free: u64,
}

/// What malloc holds now, summed over its arenas; `None` where the allocator is not glibc's.
/// Walks every arena's free lists under its lock, as a trim does: for scrapes, not hot paths.
pub fn heap_use() -> Option<HeapUse> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no pointer and only reads malloc's own arenas, under their
        // locks; any thread may call it at any time.
        let info = unsafe { libc::mallinfo2() };
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Some(HeapUse {
            // Chunks in the arenas plus those malloc mapped on their own (large ones).
            in_use: bytes(info.uordblks).saturating_add(bytes(info.hblkhd)),
            free: bytes(info.fordblks),
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Trims every [`TRIM_EVERY`] until the task is aborted, off the async threads.
pub async fn trim_periodically() {
    let mut interval = tokio::time::interval(TRIM_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: nothing to give back yet.
    interval.tick().await;
    loop {
        interval.tick().await;
        let _ = tokio::task::spawn_blocking(return_free_memory).await;
    }
}
