//! The sled deadlock scaleout patches (vendor/sled/SCALEOUT-PATCH.md): heavy writes after many
//! removals make sled truncate the tail of its file while its IO threads are busy; upstream
//! 0.34.7 queues the truncation behind those threads, which wait for a lock its waiter holds,
//! and the database hangs for good. This test drives that pattern and fails if writes stop
//! making progress. Without the patch it hung in 6 of 6 runs on a 2-core machine (see the
//! patch notes for how to check it again).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WRITERS: u64 = 8;
const LOAD: Duration = Duration::from_secs(20);
/// A round is a few hundred small writes: a stall this long is a hang, even on a loaded machine.
const STALL: Duration = Duration::from_secs(20);
/// Small segments make freed segments at the file's tip (and so truncations) frequent.
const SEGMENT_SIZE: usize = 64 * 1024;

#[test]
fn writes_after_removals_never_hang_on_a_file_truncation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path().join("sled"))
        .cache_capacity(8 << 20)
        .segment_size(SEGMENT_SIZE)
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("open sled");
    let tree = db.open_tree("rows").expect("open tree");
    let rounds = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + LOAD;
    let writers: Vec<JoinHandle<()>> = (0..WRITERS)
        .map(|writer| {
            let (db, tree, rounds) = (db.clone(), tree.clone(), rounds.clone());
            std::thread::spawn(move || write_and_remove_until(end, writer, &db, &tree, &rounds))
        })
        .collect();

    let mut seen = 0;
    let mut last_progress = Instant::now();
    while writers.iter().any(|writer| !writer.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = rounds.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_progress = Instant::now();
        }
        // The hung threads are left behind: nothing can free them, and the test binary ends.
        assert!(
            last_progress.elapsed() < STALL,
            "sled stopped making progress after {seen} rounds: the truncation deadlock \
             (is vendor/sled still patched in through [patch.crates-io]?)"
        );
    }
    for writer in writers {
        writer.join().expect("writer thread");
    }
    assert!(seen > WRITERS, "the writers made no rounds at all");
}

fn write_and_remove_until(
    end: Instant,
    writer: u64,
    db: &sled::Db,
    tree: &sled::Tree,
    rounds: &AtomicU64,
) {
    let value = vec![7u8; 1000];
    let mut round = 0u64;
    while Instant::now() < end {
        let keys = (0..200u64).map(|i| (writer << 48 | round << 16 | i).to_be_bytes());
        for key in keys.clone() {
            tree.insert(key, value.as_slice()).expect("insert");
        }
        for key in keys {
            tree.remove(key).expect("remove");
        }
        if round % 4 == 0 {
            db.flush().expect("flush");
        }
        round += 1;
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}
