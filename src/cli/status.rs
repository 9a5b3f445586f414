//! `scaleout status`: one screen of the whole system, once or `--watch`ed.

use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::screen::{self, Frame, Layout};
use super::{shutdown_signal, CliError, ClientArgs, Output};
use crate::client::{Client, ClientError};
use crate::pb::v1::ClusterStatusResponse;
use crate::transport::Security;

/// `scaleout status`: the client's options and how often to redraw.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Redraw every SECS seconds (2 when SECS is left out) until Ctrl-C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
    /// With --watch: stop after this many frames (for scripts and tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub frames: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The shortest time a `--watch` frame may wait for the cluster: a member status that does not
/// come takes the answering replica 1.5 s to give up on.
const MIN_FRAME_DEADLINE: Duration = Duration::from_secs(3);

/// How long a frame waits for the leader it was told about before it keeps a follower's answer.
const LEADER_DEADLINE: Duration = Duration::from_secs(3);

/// Where the status frames come from: ClusterStatus from the leader when there is one (its job
/// counts are the freshest and it asked every member itself), else from whichever replica
/// answers; ListWorkers through the leader, or from any replica while there is none.
struct FrameSource {
    endpoints: Client,
    security: Security,
    deadline: Duration,
    stale: bool,
    /// The leader's API address and a client of it alone, so later frames go straight to it.
    leader: Option<(String, Client)>,
}

impl FrameSource {
    fn new(args: &ClientArgs, watch_secs: Option<u64>) -> Result<FrameSource, CliError> {
        let security = args.tls.security()?;
        let mut deadline = Duration::from_secs(args.timeout_secs);
        if let Some(secs) = watch_secs {
            // While the cluster is down, a frame must not freeze the screen much longer than
            // the interval.
            deadline = deadline.min(Duration::from_secs(secs).max(MIN_FRAME_DEADLINE));
        }
        Ok(FrameSource {
            endpoints: Client::new(&args.endpoints, security.clone())?.with_deadline(deadline),
            security,
            deadline,
            stale: args.stale,
            leader: None,
        })
    }

    /// One frame, and the error that kept every replica from answering, if one did.
    async fn take(&mut self) -> (Frame, Option<ClientError>) {
        let (cluster, error) = match self.cluster_status().await {
            Ok(status) => (Ok(status), None),
            Err(error) => (Err(error.to_string()), Some(error)),
        };
        let workers = match &cluster {
            Ok(status) => {
                // Without a leader a linearizable read would only wait out the deadline.
                let stale = self.stale || status.leader_id.is_none();
                self.endpoints
                    .list_workers(stale)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(_) => Err("not asked: no replica answered".to_string()),
        };
        let frame = Frame {
            taken_at_ms: crate::wall_time::now_ms(),
            cluster,
            workers,
            endpoints: self.endpoints.endpoints().to_vec(),
        };
        (frame, error)
    }

    async fn cluster_status(&mut self) -> Result<ClusterStatusResponse, ClientError> {
        let from_leader =
            |status: &ClusterStatusResponse| status.leader_id == Some(status.answered_by);
        if let Some((_, leader)) = &self.leader {
            match leader.cluster_status().await {
                Ok(status) if from_leader(&status) => return Ok(status),
                // It died or stepped down: find the cluster through the endpoints again.
                _ => self.leader = None,
            }
        }
        let status = self.endpoints.cluster_status().await?;
        if status.leader_id.is_none() || status.leader_api_addr.is_empty() {
            return Ok(status);
        }
        let leader = Client::new(&[status.leader_api_addr.as_str()], self.security.clone())?
            .with_deadline(self.deadline.min(LEADER_DEADLINE));
        if from_leader(&status) {
            self.leader = Some((status.leader_api_addr.clone(), leader));
            return Ok(status);
        }
        match leader.cluster_status().await {
            Ok(own) if from_leader(&own) => {
                self.leader = Some((status.leader_api_addr.clone(), leader));
                Ok(own)
            }
            // The follower's view is still a whole screen, if a little behind.
            _ => Ok(status),
        }
    }
}

/// Writes a frame to standard output; `Ok(false)` when the reader has gone away (`| head`).
fn print_frame(
    frame: &Frame,
    output: Output,
    layout: Layout,
    terminal: bool,
) -> Result<bool, CliError> {
    match screen::write_frame(
        &mut std::io::stdout().lock(),
        frame,
        output,
        layout,
        terminal,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::failed(anyhow!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// `scaleout status [--watch [SECS]] [--frames N]`: the cluster, its workers and its queue on
/// one screen. Without --watch it exits 3 when no replica answers.
pub async fn status(args: &StatusArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if let (None, Some(frames @ 2..)) = (args.watch, args.frames) {
        return Err(CliError::usage(anyhow!(
            "--frames {frames} needs --watch: without it, status draws one frame"
        )));
    }
    let mut source = FrameSource::new(&args.client, args.watch)?;
    let output = args.client.output;
    let layout = Layout {
        max_lines: screen::SCREEN_LINES,
        every_secs: args.watch,
    };
    let terminal = std::io::stdout().is_terminal();
    let Some(every_secs) = args.watch else {
        let (frame, error) = source.take().await;
        print_frame(&frame, output, layout, terminal)?;
        return error.map_or(Ok(()), |e| Err(e.into()));
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(Duration::from_secs(every_secs));
    // A frame slower than the interval delays the next one rather than bunching them up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drawn = 0;
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticks.tick() => {}
        }
        let frame = tokio::select! {
            () = &mut stop => return Ok(()),
            (frame, _) = source.take() => frame,
        };
        if !print_frame(&frame, output, layout, terminal)? {
            return Ok(());
        }
        drawn += 1;
        if args.frames.is_some_and(|frames| drawn >= frames) {
            return Ok(());
        }
    }
}
