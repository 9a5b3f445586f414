//! The chaos run inside `cargo test`: a fixed seed, 45 s of faults (or longer, until every kind has been injected at
//! least once), then every invariant checked. The long run is `scaleout chaos --minutes N
//! --seed S`, or the ignored test below with SCALEOUT_CHAOS_MINUTES and SCALEOUT_CHAOS_SEED.

use std::path::PathBuf;
use std::time::Duration;

use scaleout::chaos::faults::FaultKind;
use scaleout::chaos::{run, ChaosOptions};

const SEED: u64 = 20_261_126;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scaleout"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_keeps_every_invariant() {
    let report = run(ChaosOptions::new(binary(), SEED, Duration::from_secs(45)))
        .await
        .expect("the chaos run could not be carried out");
    println!("{report}");
    assert!(report.ok(), "{report}");
    for kind in FaultKind::ALL {
        assert!(
            report.faults.contains_key(kind.name()),
            "fault {} was never injected: {report}",
            kind.name()
        );
    }
    assert!(report.submits_acknowledged >= 100, "{report}");
    assert!(report.reads_checked > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored, SCALEOUT_CHAOS_MINUTES and SCALEOUT_CHAOS_SEED"]
async fn a_long_chaos_run_keeps_every_invariant() {
    let minutes: u64 = std::env::var("SCALEOUT_CHAOS_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SCALEOUT_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let report = run(ChaosOptions::new(
        binary(),
        seed,
        Duration::from_secs(minutes * 60),
    ))
    .await
    .expect("the chaos run could not be carried out");
    println!("{report}");
    assert!(report.ok(), "{report}");
}
