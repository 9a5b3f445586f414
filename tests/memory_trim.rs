//! `memory::return_free_memory` gives freed memory back to the system (alone in its own test
//! binary: resident memory is the whole process's, which other tests would move).

/// Resident memory falls after a burst of small allocations is freed and the heap trimmed
/// (glibc only: elsewhere there is nothing to give back).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_trim_gives_freed_small_allocations_back() {
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
    // 200 MiB in 1 KiB blocks (below mmap's threshold: they live in the arena); one in 64 kept,
    // so the arena's top cannot shrink by itself when the rest are freed.
    let blocks: Vec<Vec<u8>> = (0..200 * 1024).map(|_| vec![1u8; 1024]).collect();
    let kept: Vec<Vec<u8>> = blocks
        .into_iter()
        .enumerate()
        .filter(|(n, _)| n % 64 == 63)
        .map(|(_, block)| block)
        .collect();
    let before = resident_kib();
    assert!(
        before > 150 * 1024,
        "the freed blocks stay resident: {before} KiB"
    );
    assert!(
        scaleout::memory::return_free_memory(),
        "nothing was given back"
    );
    let after = resident_kib();
    assert!(
        after + 100 * 1024 < before,
        "resident {before} KiB before the trim, {after} KiB after"
    );
    assert_eq!(kept.len(), 3200);
}
