//! The chaos run inside `cargo test`: a fixed seed, 45 s of faults (or longer, until every kind has been injected at
//! least once), then every invariant checked. The long run is `scaleout chaos --minutes N
//! --seed S`, or the ignored test below with SCALEOUT_CHAOS_MINUTES and SCALEOUT_CHAOS_SEED.

#[path = "support/iridium.rs"]
mod iridium;

use std::path::PathBuf;
use std::time::Duration;

use scaleout::chaos::faults::FaultKind;
use scaleout::chaos::ssisdb::SsisdbTarget;
use scaleout::chaos::{run, ChaosOptions};
use scaleout::config::SsisdbSettings;
use tokio::sync::Mutex;

use iridium::{Iridium, USER};

/// One cluster at a time: two on 2 cores starve each other's elections.
static SERIAL: Mutex<()> = Mutex::const_new(());

const SEED: u64 = 20_261_126;

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scaleout"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_keeps_every_invariant() {
    let _serial = SERIAL.lock().await;
    let report = run(ChaosOptions::new(binary(), SEED, Duration::from_secs(45)))
        .await
        .expect("the chaos run could not be carried out");
    println!("{report}");
    assert!(report.ok(), "{report}");
    for kind in FaultKind::ALL
        .into_iter()
        .filter(|k| *k != FaultKind::SsisdbOutage)
    {
        assert!(
            report.faults.contains_key(kind.name()),
            "fault {} was never injected: {report}",
            kind.name()
        );
    }
    assert!(report.submits_acknowledged >= 100, "{report}");
    assert!(report.reads_checked > 0, "{report}");
}

/// Shipping to SSISDB (iridium_server in this process) through a proxy that goes dark now and
/// then, while the leader is killed, paused, cut off, and cut off from its peers alone for 25 s
/// or more (it keeps shipping its older state meanwhile), and jobs also come from T-SQL
/// (`scaleout.job_requests`): every event lands exactly once, every row shows the final
/// replicated state, and every request is exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssisdb_outages_and_failovers_lose_and_duplicate_no_event() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password = "Chaos#Pass1";
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, password).expect("password file");
    let server = Iridium::start(0, &dir.path().join("iridium"), password).expect("iridium");
    let target = SsisdbTarget {
        server: format!("127.0.0.1:{}", server.port)
            .parse()
            .expect("address"),
        options: format!("Database=SSISDB;User Id={USER};Encrypt=DANGER_PLAINTEXT"),
        password_file: password_file.clone(),
    };
    let settings: SsisdbSettings = target.settings_at(target.server);
    scaleout::ssisdb::install_schema(&settings)
        .await
        .expect("install the schema");

    let mut options = ChaosOptions::new(binary(), SEED + 1, Duration::from_secs(40));
    options.ssisdb = Some(target);
    // iridium writes slowly: a lighter load keeps the outbox within what it can take.
    options.submitters = 1;
    options.pause_between_submits_ms = (150, 400);
    options.faults = vec![
        FaultKind::SsisdbOutage,
        FaultKind::KillLeader,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::PartitionLeaderFromPeers,
    ];
    let report = run(options)
        .await
        .expect("the chaos run could not be carried out");
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert!(report.faults.contains_key("ssisdb-outage"), "{report}");
    assert!(
        report.faults.contains_key("partition-leader-from-peers"),
        "{report}"
    );
    assert!(report.ssisdb_events.unwrap_or(0) > 0, "{report}");
    assert!(
        report.ssisdb_requests > 0,
        "no job request from T-SQL: {report}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored, SCALEOUT_CHAOS_MINUTES and SCALEOUT_CHAOS_SEED"]
async fn a_long_chaos_run_keeps_every_invariant() {
    let _serial = SERIAL.lock().await;
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
