//! Building a snapshot off the state machine task, from the view `get_snapshot_builder` took.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{AnyError, ErrorVerb, RaftSnapshotBuilder};

use super::snapshot_error;
use crate::queue::{JobId, View};
use crate::raft::job_rows::read_archived;
use crate::raft::log_reader::LogReader;
use crate::raft::outbox_rows::OutboxReader;
use crate::raft::snapshot_data::DataWriter;
use crate::raft::snapshot_store::SnapshotStore;
use crate::raft::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Builds a snapshot from the view taken by `get_snapshot_builder`; runs concurrently with
/// later applies.
pub struct SnapshotBuilder {
    /// How long taking the view held up apply (the state machine task waits for it).
    pub(super) view_ms: u64,
    /// The `sm` tree, for finished jobs' full rows.
    pub(super) tree: sled::Tree,
    /// The stored lines; those of the view's jobs, as counted in the view, go in the snapshot.
    pub(super) logs: LogReader,
    /// The view: the queue's rows as of `last_applied`, without log lines nor finished jobs'
    /// full rows.
    pub(super) state: View,
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    pub(super) snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let build_err = |e: AnyError| snapshot_error(None, ErrorVerb::Write, e);
        let started = std::time::Instant::now();
        // A random part, so two snapshots at the same log id still get different ids.
        let nonce: u32 = rand::random();
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}-{nonce:08x}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{nonce:08x}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        // Off the state machine task: applies go on meanwhile. The view's rows, then its jobs'
        // lines read from the tree straight into the file; stored durably before openraft
        // purges the log behind it, and not stored when a newer snapshot was installed meanwhile
        // (the current snapshot never goes backwards).
        let View {
            jobs: live,
            parts: mut state,
        } = std::mem::take(&mut self.state);
        let jobs = (live.len() + state.finished.len()) as u64;
        let tree = self.tree.clone();
        let logs = self.logs.clone();
        let events_reader = OutboxReader::new(self.tree.clone());
        let snapshots = self.snapshots.clone();
        let build_meta = meta.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let finished = std::mem::take(&mut state.finished);
            let outbox = state.outbox_meta.clone();
            // The events the state value carries (the truncation events, or a held outbox).
            let in_state: BTreeSet<u64> = state.outbox.iter().map(|e| e.id).collect();
            let counts: BTreeMap<JobId, u64> = live
                .iter()
                .map(|job| (job.id, job.log_lines))
                .chain(finished.iter().map(|job| (job.id, job.logs.lines)))
                .collect();
            let part = snapshots.create_part()?;
            let write_err = |e: std::io::Error| format!("cannot write the snapshot: {e}");
            let mut writer = DataWriter::start(part, &state).map_err(write_err)?;
            drop(state);
            for job in live {
                writer.job(&job).map_err(write_err)?;
            }
            // A finished job's row as it finished, with the counters of the view. A row removed
            // by retention since the view is missing: the job goes as kept, and the entry that
            // removed it, which follows the snapshot, removes it again on the replica that
            // installs it.
            for kept in finished {
                match read_archived(&tree, &kept).map_err(|e| e.to_string())? {
                    Some(row) => writer.finished_row(&kept, &row).map_err(write_err)?,
                    None => writer.finished(&kept).map_err(write_err)?,
                }
            }
            // The view's pending events, from the tree (a held outbox is in the state already,
            // and so are the truncation events, as the view has them). Events released since
            // the view are missing: the release that follows the snapshot in the log, which the
            // installing replica applies next, releases them again, and its count is the one
            // the view had.
            if !outbox.held {
                let newest = outbox.newest_event_id();
                for event in events_reader.each_after(outbox.acked_up_to) {
                    let event = event.map_err(|e| e.to_string())?;
                    if event.id > newest {
                        break;
                    }
                    if !in_state.contains(&event.id) {
                        writer.event(&event).map_err(write_err)?;
                    }
                }
            }
            logs.each_as_of(&counts, |line| writer.line(line))
                .map_err(write_err)?;
            let (mut data, lines, bytes) = writer.finish().map_err(write_err)?;
            let stored = snapshots.commit(&mut data, &build_meta, true)?;
            Ok((data, lines, bytes, stored))
        })
        .await
        .map_err(|e| build_err(AnyError::error(e)))?;
        let (data, lines, bytes, stored) = built.map_err(|e| build_err(AnyError::error(e)))?;
        tracing::info!(
            last_log_index = meta.last_log_id.map(|id| id.index),
            bytes,
            jobs,
            log_lines = lines,
            view_ms = self.view_ms,
            build_ms = started.elapsed().as_millis() as u64,
            stored,
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}
