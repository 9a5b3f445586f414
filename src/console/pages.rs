//! The console's pages, rendered on the server from what the API answered: pure functions from
//! the API's messages to HTML, escaped, with no script needed to read them. Live parts reload
//! themselves (the overview every few seconds), so a page left open follows a failover.

use super::history::Minute;
use crate::cli::screen::{format_age, format_utc, job_counts_by_state, versions, Quorum};
use crate::cli::state_name;
use crate::pb::v1::{ClusterStatusResponse, Job, JobLogLine, Worker};
use crate::queue::JobState;
use crate::tls::Role;

/// How many of a job's last log lines its page shows.
pub const LOG_LINES_SHOWN: u32 = 1000;

/// How often a live page (the overview, workers, a running job) fetches itself again.
pub const LIVE_REFRESH_SECS: u32 = 2;

/// `text` made safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The console's stylesheet and script, served under `/static/` (the pages carry no inline
/// style or script, so the Content-Security-Policy can forbid both).
pub const STYLESHEET: &str = include_str!("assets/console.css");
pub const SCRIPT: &str = include_str!("assets/console.js");

/// Who is signed in, as the page header shows it, and the session's CSRF token for its forms.
pub struct Viewer<'a> {
    pub role: &'a Role,
    pub csrf: &'a str,
}

/// A whole page: the header (navigation, who is signed in, sign out), then `body`. A live page
/// (`refresh_secs`) fetches itself again that often and swaps in its new content (the script;
/// without it the browser reloads the page).
pub fn page(
    title: &str,
    viewer: Option<&Viewer<'_>>,
    refresh_secs: Option<u32>,
    body: &str,
) -> String {
    let (refresh, live) = match refresh_secs {
        Some(secs) => (
            format!("<noscript><meta http-equiv=\"refresh\" content=\"{secs}\"></noscript>"),
            format!(" data-refresh=\"{secs}\""),
        ),
        None => (String::new(), String::new()),
    };
    let who = match viewer {
        Some(viewer) => format!(
            "<a href=\"/\">Overview</a><a href=\"/jobs\">Jobs</a><a href=\"/workers\">Workers</a>\
             <a href=\"/cluster\">Cluster</a>\
             <form method=\"post\" action=\"/signout\">\
             <span>{}</span> <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Sign out</button></form>",
            escape(&viewer.role.to_string()),
            escape(viewer.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{} · scaleout</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
         <script src=\"/static/console.js\" defer></script></head><body{live}>\
         <header><strong>scaleout</strong>{who}</header>\
         <p class=\"alert\" id=\"connection\" hidden></p><main>{body}</main></body></html>",
        escape(title)
    )
}

/// `html` (a whole page) with `notice` shown above its content.
pub fn with_notice(html: String, notice: &str) -> String {
    html.replacen(
        "<main>",
        &format!(
            "<main><p class=\"muted\" id=\"notice\">{}</p>",
            escape(notice)
        ),
        1,
    )
}

/// The sign-in page, with why the last attempt failed.
pub fn signin(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"bad\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>{error}<form method=\"post\" action=\"/signin\">\
         <p><label>Sign-in token<br><textarea name=\"token\" rows=\"6\" cols=\"80\" \
         autocomplete=\"off\" required></textarea></label></p><p><button>Sign in</button></p></form>\
         <p class=\"muted\">Make a token where your operator or admin certificate is:<br>\
         <code>scaleout console token --tls-dir DIR --identity operator</code> (or <code>admin</code>).</p>"
    );
    page("Sign in", None, None, &body)
}

/// Refused: what the action needs and who asked.
pub fn refused(viewer: &Viewer<'_>, action: &str, needs: &str) -> String {
    let body = format!(
        "<h1>Not allowed</h1><p class=\"bad\">{} needs {}; you are signed in as {}.</p>\
         <p><a href=\"/\">Back to the overview</a></p>",
        escape(action),
        escape(needs),
        escape(&viewer.role.to_string())
    );
    page("Not allowed", Some(viewer), None, &body)
}

/// A page saying the cluster could not answer, and why.
pub fn unavailable(viewer: &Viewer<'_>, error: &str) -> String {
    let body = format!(
        "<div class=\"alert\">The cluster did not answer: {}</div>\
         <p class=\"muted\">This page tries again every {LIVE_REFRESH_SECS} s.</p>",
        escape(error)
    );
    page("Overview", Some(viewer), Some(LIVE_REFRESH_SECS), &body)
}

/// The overview: the majority, the leader, each replica, jobs by state, the outbox, and the
/// last hour as this replica saw it.
pub fn overview(
    viewer: &Viewer<'_>,
    status: &ClusterStatusResponse,
    workers: Option<&[Worker]>,
    hour: &[Minute],
) -> String {
    let quorum = Quorum::of(status);
    let mut body = String::new();
    if let Some(warning) = quorum.warning() {
        body.push_str(&format!("<div class=\"alert\">{}</div>", escape(&warning)));
    }
    let leader = match status.leader_id {
        Some(id) => format!(
            "replica {id} <span class=\"muted\">{}</span>",
            escape(&status.leader_api_addr)
        ),
        None => "none known (an election is under way)".to_string(),
    };
    body.push_str(&format!(
        "<h1>Overview</h1><p id=\"leader\">Leader: <strong>{leader}</strong>, term {}. \
         {} of {} voters reachable; {}. <span class=\"muted\">Answered by replica {}.</span></p>",
        status.term,
        quorum.reachable_voters,
        quorum.voters,
        escape(&versions(status)),
        status.answered_by
    ));
    body.push_str(
        "<h2>Replicas</h2><table id=\"replicas\"><tr><th>Replica</th><th>API</th><th>Role</th>\
         <th>Reachable</th><th>Term</th><th>Commit</th><th>Applied</th><th>Lag</th>\
         <th>Version</th><th>Console</th></tr>",
    );
    let known = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in &status.replicas {
        let reachable = match r.reachable {
            true => "<span class=\"ok\">yes</span>".to_string(),
            false => format!(
                "<span class=\"bad\" title=\"{}\">no</span>",
                escape(&r.error)
            ),
        };
        body.push_str(&format!(
            "<tr data-replica=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{reachable}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.id,
            r.id,
            escape(&r.api_addr),
            escape(if r.reachable { &r.role } else { "-" }),
            r.term,
            known(r.commit_index),
            known(r.applied_index),
            lag(status, r),
            escape(&r.version),
            console_link(&r.console_url)
        ));
    }
    body.push_str("</table>");
    body.push_str(&worker_summary(workers));
    body.push_str("<h2>Jobs</h2><table id=\"jobs\"><tr>");
    let counts = status.job_counts.unwrap_or_default();
    let by_state = job_counts_by_state(&counts);
    for (state, _) in &by_state {
        body.push_str(&format!(
            "<th>{}</th>",
            escape(&state.as_str().replace('_', " "))
        ));
    }
    body.push_str("</tr><tr>");
    for (_, count) in &by_state {
        body.push_str(&format!("<td>{count}</td>"));
    }
    body.push_str(&format!(
        "</tr></table><h2>SSISDB outbox</h2><p>{} events not yet in SSISDB (shipped up to \
         event {}), {} log events dropped.</p>",
        status.outbox_events, status.outbox_shipped_up_to, status.outbox_dropped_log_events
    ));
    body.push_str(&format!(
        "<h2>The last hour</h2><p class=\"muted\">As replica {} saw it (kept since it started; \
         dashed lines: leader changes).</p><div class=\"charts\">{}{}</div>",
        status.answered_by,
        chart(
            "chart-jobs",
            "Jobs per minute",
            hour,
            &[
                ("submitted", |m: &Minute| m.submitted),
                ("completed", |m: &Minute| m.completed),
                ("failed", |m: &Minute| m.failed),
            ],
        ),
        chart(
            "chart-queue",
            "Queue depth",
            hour,
            &[("depth", |m: &Minute| m.queue_depth)]
        ),
    ));
    page("Overview", Some(viewer), Some(LIVE_REFRESH_SECS), &body)
}

/// How many entries replica `r` has yet to apply of what the leader has in its log (`-`
/// when either is not known).
fn lag(status: &ClusterStatusResponse, r: &crate::pb::v1::ReplicaStatus) -> String {
    let leader_log = status
        .replicas
        .iter()
        .find(|leader| Some(leader.id) == status.leader_id && leader.reachable)
        .and_then(|leader| leader.last_log_index);
    match (leader_log, r.applied_index, r.reachable) {
        (Some(log), Some(applied), true) => log.saturating_sub(applied).to_string(),
        _ => "-".to_string(),
    }
}

/// The workers by state, one line (or why they are not known).
fn worker_summary(workers: Option<&[Worker]>) -> String {
    let Some(workers) = workers else {
        return "<h2>Workers</h2><p class=\"muted\">Not known now.</p>".to_string();
    };
    let count = |keep: &dyn Fn(&Worker) -> bool| workers.iter().filter(|w| keep(w)).count();
    let online = count(&|w| w.online);
    let enabled = count(&|w| w.online && w.enabled && !w.draining);
    let draining = count(&|w| w.online && w.enabled && w.draining);
    let disabled = count(&|w| w.online && !w.enabled);
    let tasks: usize = workers.iter().map(|w| w.running_jobs.len()).sum();
    format!(
        "<h2>Workers</h2><p id=\"workers\"><a href=\"/workers\">{online} online</a> \
         ({enabled} taking tasks, {draining} draining, {disabled} disabled), {} offline; \
         {tasks} tasks running.</p>",
        workers.len() - online
    )
}

/// What a chart shows of a minute, named by its CSS class.
type Series = (&'static str, fn(&Minute) -> u64);

const CHART_LEFT: u64 = 44;
const CHART_STEP: u64 = 8;
const CHART_TOP: u64 = 22;
const CHART_HEIGHT: u64 = 100;

/// A chart of `hour` as inline SVG (drawn on the server: no script, no library): one bar per
/// series and minute, or a line for a single series; leader changes as dashed lines, each
/// with a tooltip naming the new leader.
fn chart(id: &str, title: &str, hour: &[Minute], series: &[Series]) -> String {
    let width = CHART_LEFT + CHART_STEP * hour.len() as u64 + 8;
    let bottom = CHART_TOP + CHART_HEIGHT;
    let max = hour
        .iter()
        .flat_map(|m| series.iter().map(move |(_, value)| value(m)))
        .max()
        .unwrap_or(0)
        .max(1);
    let y = |value: u64| bottom - value * CHART_HEIGHT / max;
    let mut svg = format!(
        "<svg class=\"chart\" id=\"{id}\" width=\"{width}\" height=\"{}\" \
         viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{CHART_LEFT}\" y=\"12\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text>\
         <text x=\"{}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <line class=\"axis\" x1=\"{CHART_LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\"/>",
        bottom + 16,
        bottom + 16,
        escape(title),
        escape(title),
        CHART_LEFT - 4,
        CHART_TOP + 4,
        CHART_LEFT - 4,
        width - 8,
    );
    let x_of = |index: usize| CHART_LEFT + CHART_STEP * index as u64;
    if let [(class, value)] = series {
        let points: Vec<String> = hour
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{},{}", x_of(i) + CHART_STEP / 2, y(value(m))))
            .collect();
        svg.push_str(&format!(
            "<polyline class=\"{class}\" points=\"{}\"/>",
            points.join(" ")
        ));
    } else {
        let bar = (CHART_STEP - 2) / series.len().max(1) as u64;
        for (i, m) in hour.iter().enumerate() {
            for (k, (class, value)) in series.iter().enumerate() {
                let v = value(m);
                if v == 0 {
                    continue;
                }
                svg.push_str(&format!(
                    "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{}\">\
                     <title>{v} {class}</title></rect>",
                    x_of(i) + 1 + bar * k as u64,
                    y(v),
                    bottom - y(v)
                ));
            }
        }
    }
    for (i, m) in hour.iter().enumerate() {
        for change in &m.leader_changes {
            let offset =
                (change.at_ms.saturating_sub(m.start_ms) * CHART_STEP / 60_000).min(CHART_STEP - 1);
            let x = x_of(i) + offset;
            let who = match change.leader {
                Some(leader) => format!("replica {leader} leads"),
                None => "no leader (election)".to_string(),
            };
            svg.push_str(&format!(
                "<line class=\"leader-change\" x1=\"{x}\" y1=\"{CHART_TOP}\" x2=\"{x}\" \
                 y2=\"{bottom}\"><title>{} UTC, term {}: {who}</title></line>",
                format_utc(change.at_ms),
                change.term
            ));
        }
    }
    svg.push_str(&format!(
        "<text x=\"{CHART_LEFT}\" y=\"{}\">-{} min</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text></svg>",
        bottom + 14,
        hour.len(),
        width - 8,
        bottom + 14
    ));
    let legend: String = series
        .iter()
        .map(|(class, _)| format!("<span class=\"{class}\"></span>{class}"))
        .collect();
    format!("<figure>{svg}<figcaption class=\"legend\">{legend}</figcaption></figure>")
}

/// A form that posts to `action` with the session's CSRF token; `confirm`: a question the
/// browser asks first.
fn action_form(viewer: &Viewer<'_>, action: &str, label: &str, confirm: Option<&str>) -> String {
    let confirm = confirm
        .map(|q| format!(" data-confirm=\"{}\"", escape(q)))
        .unwrap_or_default();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"{confirm}>\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>{}</button></form>",
        escape(action),
        escape(viewer.csrf),
        escape(label)
    )
}

/// What the jobs page filters on besides the state (the query's `name`, `tag`, `worker`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct JobsFilter {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub worker: String,
}

/// `text` encoded for a URL's query.
fn query_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Jobs by id, a page at a time, filtered by state, name, tag and worker; the submit form below.
pub fn jobs(
    viewer: &Viewer<'_>,
    jobs: &[Job],
    state: Option<JobState>,
    filter: &JobsFilter,
    next_after: u64,
) -> String {
    let options: String = std::iter::once(("", "any state"))
        .chain(JobState::ALL.iter().map(|s| (s.as_str(), s.as_str())))
        .map(|(value, label)| {
            let selected = match (state, value) {
                (None, "") => " selected",
                (Some(s), v) if s.as_str() == v => " selected",
                _ => "",
            };
            format!(
                "<option value=\"{value}\"{selected}>{}</option>",
                label.replace('_', " ")
            )
        })
        .collect();
    let mut body = format!(
        "<h1>Jobs</h1><form method=\"get\" action=\"/jobs\" id=\"filter\">\
         <label>State <select name=\"state\">{options}</select></label> \
         <label>Name contains <input name=\"name\" value=\"{}\"></label> \
         <label>Tag <input name=\"tag\" value=\"{}\" size=\"12\"></label> \
         <label>Worker (id prefix or name) <input name=\"worker\" value=\"{}\" size=\"16\"></label> \
         <button>Filter</button> <a href=\"/jobs\">clear</a></form>",
        escape(&filter.name),
        escape(&filter.tag),
        escape(&filter.worker)
    );
    body.push_str(
        "<table id=\"jobs\"><tr><th>Job</th><th>State</th><th>Name</th><th>Attempts</th>\
         <th>Last worker</th><th>Tags</th><th>Command</th></tr>",
    );
    for job in jobs {
        let spec = job.spec.clone().unwrap_or_default();
        let command = match spec.package.is_empty() {
            true => spec.argv.join(" "),
            false => spec.package.clone(),
        };
        let worker = job
            .attempts
            .last()
            .map_or("-".to_string(), |a| a.worker_id.chars().take(8).collect());
        body.push_str(&format!(
            "<tr data-job=\"{}\"><td><a href=\"/jobs/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{}/{}</td><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
            job.id,
            job.id,
            job.id,
            state_name(job.state),
            escape(&spec.name),
            job.attempts.len(),
            spec.max_attempts.max(1),
            escape(&worker),
            escape(&spec.tags.join(", ")),
            escape(&command)
        ));
    }
    body.push_str("</table>");
    match (jobs.is_empty(), next_after) {
        (true, 0) => body.push_str("<p class=\"muted\">No jobs here.</p>"),
        // A filtered listing looks at a bounded number of jobs per page.
        (true, _) => body.push_str(
            "<p class=\"muted\">No match among the jobs looked at so far; the next page looks \
             further.</p>",
        ),
        _ => {}
    }
    if next_after > 0 {
        let query: String = [
            ("state", state.map_or("", |s| s.as_str())),
            ("name", filter.name.as_str()),
            ("tag", filter.tag.as_str()),
            ("worker", filter.worker.as_str()),
        ]
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{key}={}&amp;", query_encode(value)))
        .collect();
        body.push_str(&format!(
            "<p><a href=\"/jobs?{query}after={next_after}\">Next page</a></p>"
        ));
    }
    body.push_str(&format!(
        "<h2>Submit a job</h2><form method=\"post\" action=\"/jobs\" id=\"submit\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><label>Name <input name=\"name\"></label></p>\
         <p><label>Command, one argument per line<br>\
         <textarea name=\"argv\" rows=\"3\" cols=\"60\"></textarea></label></p>\
         <p><label>or an SSIS package (.dtsx) <input name=\"package\" size=\"50\"></label></p>\
         <p><label>Parameters, NAME=VALUE per line<br>\
         <textarea name=\"params\" rows=\"2\" cols=\"60\"></textarea></label></p>\
         <p><label>Attempts <input name=\"max_attempts\" value=\"1\" size=\"3\"></label> \
         <label>Priority <input name=\"priority\" value=\"0\" size=\"4\"></label> \
         <label>Timeout (s, 0: none) <input name=\"timeout_secs\" value=\"0\" size=\"6\"></label></p>\
         <p><label>Tags (comma-separated) <input name=\"tags\"></label> \
         <label>Workers (ids, comma-separated) <input name=\"workers\" size=\"40\"></label></p>\
         <p><button>Submit</button></p></form>",
        escape(viewer.csrf)
    ));
    page("Jobs", Some(viewer), None, &body)
}

/// One job: its spec, its attempts as a timeline, its log, and cancel while it can be.
pub fn job(viewer: &Viewer<'_>, job: &Job, logs: &[JobLogLine], now_ms: u64) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let state = state_name(job.state);
    let terminal = crate::pb::state_from_pb(job.state)
        .ok()
        .flatten()
        .is_some_and(JobState::is_terminal);
    let mut body = format!(
        "<h1>Job {} <span id=\"state\">{state}</span></h1><p>{}</p>",
        job.id,
        escape(&spec.name)
    );
    if !terminal {
        body.push_str(&action_form(
            viewer,
            &format!("/jobs/{}/cancel", job.id),
            "Cancel this job",
            Some("Cancel this job?"),
        ));
    }
    let command = match spec.package.is_empty() {
        true => spec.argv.join(" "),
        false => format!("package {}", spec.package),
    };
    body.push_str(&format!(
        "<h2>Spec</h2><table><tr><th>Command</th><td><code>{}</code></td></tr>\
         <tr><th>Attempts allowed</th><td>{}</td></tr><tr><th>Tags</th><td>{}</td></tr>\
         <tr><th>Workers</th><td>{}</td></tr><tr><th>Priority</th><td>{}</td></tr>\
         <tr><th>Created</th><td>{}</td></tr></table>",
        escape(&command),
        spec.max_attempts.max(1),
        escape(&spec.tags.join(", ")),
        escape(&spec.allowed_workers.join(", ")),
        spec.priority,
        format_utc(job.created_at_ms)
    ));
    body.push_str("<h2>Attempts</h2>");
    body.push_str(&timeline(job, now_ms));
    body.push_str(
        "<table id=\"attempts\"><tr><th>#</th><th>Worker</th><th>Lease</th>\
         <th>Started</th><th>Ended</th><th>Outcome</th><th>Exit</th><th>Error</th></tr>",
    );
    for a in &job.attempts {
        let outcome = match crate::pb::v1::AttemptOutcome::try_from(a.outcome) {
            Ok(crate::pb::v1::AttemptOutcome::Succeeded) => "succeeded",
            Ok(crate::pb::v1::AttemptOutcome::Failed) => "failed",
            Ok(crate::pb::v1::AttemptOutcome::Expired) => "expired",
            Ok(crate::pb::v1::AttemptOutcome::Cancelled) => "cancelled",
            _ => state,
        };
        let ended = match a.ended_at_ms {
            0 => format!("running {}", format_age(now_ms, a.started_at_ms)),
            at => format_utc(at),
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{outcome}</td>\
             <td>{}</td><td>{}</td></tr>",
            a.number,
            escape(&a.worker_id),
            a.lease_token,
            format_utc(a.started_at_ms),
            ended,
            a.exit_code.map_or("-".to_string(), |c| c.to_string()),
            escape(&a.error)
        ));
    }
    body.push_str("</table><h2>Log</h2>");
    if logs.first().is_some_and(|line| line.sequence > 1) {
        body.push_str(&format!(
            "<p class=\"muted\">The last {LOG_LINES_SHOWN} lines; <code>scaleout job logs {}</code> \
             prints them all.</p>",
            job.id
        ));
    }
    body.push_str("<pre id=\"log\">");
    for line in logs {
        let text = line.line.as_ref().map_or("", |l| l.text.as_str());
        body.push_str(&format!("[attempt {}] {}\n", line.attempt, escape(text)));
    }
    body.push_str("</pre>");
    // Follows the job while it runs (state, attempts, log): live until the job ends.
    let refresh = (!terminal).then_some(LIVE_REFRESH_SECS);
    page(&format!("Job {}", job.id), Some(viewer), refresh, &body)
}

/// The attempts as bars on the job's time axis (from its creation to its end, or now), one row
/// each, coloured by outcome, with worker, lease token and times in the tooltip.
fn timeline(job: &Job, now_ms: u64) -> String {
    if job.attempts.is_empty() {
        return "<p class=\"muted\">No attempt yet.</p>".to_string();
    }
    const LEFT: u64 = 90;
    const WIDTH: u64 = 600;
    const ROW: u64 = 22;
    let start = job.created_at_ms;
    let end = job
        .attempts
        .iter()
        .map(|a| {
            if a.ended_at_ms == 0 {
                now_ms
            } else {
                a.ended_at_ms
            }
        })
        .max()
        .unwrap_or(now_ms)
        .max(start + 1);
    let x = |at: u64| LEFT + at.clamp(start, end).saturating_sub(start) * WIDTH / (end - start);
    let height = ROW * job.attempts.len() as u64 + 18;
    let mut svg = format!(
        "<svg class=\"chart\" id=\"timeline\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"attempts over time\">",
        LEFT + WIDTH + 10,
        LEFT + WIDTH + 10
    );
    for (row, a) in job.attempts.iter().enumerate() {
        // The outcome, and the chart class that colours it.
        let (outcome, class) = match crate::pb::v1::AttemptOutcome::try_from(a.outcome) {
            Ok(crate::pb::v1::AttemptOutcome::Succeeded) => ("succeeded", "completed"),
            Ok(crate::pb::v1::AttemptOutcome::Failed) => ("failed", "failed"),
            Ok(crate::pb::v1::AttemptOutcome::Expired) => ("expired", "expired"),
            Ok(crate::pb::v1::AttemptOutcome::Cancelled) => ("cancelled", "cancelled"),
            _ => ("running", "submitted"),
        };
        let ended = if a.ended_at_ms == 0 {
            now_ms
        } else {
            a.ended_at_ms
        };
        let (x0, x1) = (x(a.started_at_ms), x(ended));
        let y = ROW * row as u64;
        let worker: String = a.worker_id.chars().take(8).collect();
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\">#{} {}</text>\
             <rect class=\"{class}\" x=\"{x0}\" y=\"{}\" width=\"{}\" height=\"{}\">\
             <title>attempt {} on {} (lease {}): {} to {}, {}</title></rect>",
            y + 14,
            a.number,
            escape(&worker),
            y + 3,
            (x1 - x0).max(2),
            ROW - 6,
            a.number,
            escape(&a.worker_id),
            a.lease_token,
            format_utc(a.started_at_ms),
            if a.ended_at_ms == 0 {
                "now".to_string()
            } else {
                format_utc(a.ended_at_ms)
            },
            outcome,
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\">{} (created)</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        height - 2,
        format_utc(start),
        LEFT + WIDTH,
        height - 2,
        format_utc(end)
    ));
    svg
}

/// The worker registry, with the actions an admin may take on each worker.
pub fn workers(viewer: &Viewer<'_>, workers: &[Worker], now_ms: u64) -> String {
    let mut body = String::from(
        "<h1>Workers</h1><table id=\"workers\"><tr><th>Name</th><th>Id</th><th>State</th>\
         <th>Running</th><th>CPU</th><th>Free memory</th><th>Heartbeat</th><th></th></tr>",
    );
    let mut sorted: Vec<&Worker> = workers.iter().collect();
    sorted.sort_by_cached_key(|w| w.info.clone().unwrap_or_default().display_name);
    for w in sorted {
        let info = w.info.clone().unwrap_or_default();
        let state = match (w.enabled, w.draining) {
            (false, _) => "disabled",
            (true, true) => "draining",
            (true, false) => "enabled",
        };
        let reach = if w.online { "online" } else { "offline" };
        let id = escape(&info.worker_id);
        let actions: String = [
            ("enable", "Enable", None),
            ("disable", "Disable", None),
            (
                "drain",
                "Drain",
                Some("Drain this worker? It finishes its tasks and takes no more."),
            ),
            (
                "remove",
                "Remove",
                Some("Remove this worker from the registry?"),
            ),
        ]
        .iter()
        .map(|(action, label, confirm)| {
            action_form(viewer, &format!("/workers/{id}/{action}"), label, *confirm)
        })
        .collect();
        let running: String = w
            .running_jobs
            .iter()
            .map(|id| format!(" <a href=\"/jobs/{id}\">job {id}</a>"))
            .collect();
        body.push_str(&format!(
            "<tr data-worker=\"{}\"><td>{}</td><td><code>{id}</code></td><td>{reach}, {state}</td>\
             <td>{}/{}{running}</td><td>{:.0} %</td><td>{} MB</td><td>{}</td><td>{actions}</td></tr>",
            escape(&info.display_name),
            escape(&info.display_name),
            w.running_jobs.len(),
            info.max_tasks,
            w.cpu_percent,
            w.free_memory_mb,
            format_age(now_ms, w.last_heartbeat_ms)
        ));
    }
    body.push_str("</table>");
    if workers.is_empty() {
        body.push_str("<p class=\"muted\">No worker has registered.</p>");
    }
    page("Workers", Some(viewer), Some(LIVE_REFRESH_SECS), &body)
}

/// A replica's console as a link, or `-` when it has none (or did not say).
fn console_link(url: &str) -> String {
    match url {
        "" => "-".to_string(),
        url => format!("<a class=\"console\" href=\"{0}/\">{0}</a>", escape(url)),
    }
}

/// The members: addresses, health, consoles; for admins, add, remove, and hand leadership to.
pub fn cluster(viewer: &Viewer<'_>, status: &ClusterStatusResponse) -> String {
    let quorum = Quorum::of(status);
    let admin = matches!(viewer.role, Role::Admin(_));
    let mut body = String::new();
    if let Some(warning) = quorum.warning() {
        body.push_str(&format!("<div class=\"alert\">{}</div>", escape(&warning)));
    }
    body.push_str(&format!(
        "<h1>Cluster</h1><p>{} voters, {} reachable; leader: {}, term {}.</p>\
         <table id=\"members\"><tr><th>Replica</th><th>Member</th><th>API</th><th>Peer</th>\
         <th>Console</th><th>Health</th><th>Role</th><th>Commit</th><th>Applied</th>\
         <th>Last log</th><th>Version</th>{}</tr>",
        quorum.voters,
        quorum.reachable_voters,
        status
            .leader_id
            .map_or("none known".to_string(), |id| format!("replica {id}")),
        status.term,
        if admin { "<th></th>" } else { "" }
    ));
    let known = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for r in &status.replicas {
        let health = match r.reachable {
            true => "<span class=\"ok\">answers</span>".to_string(),
            false => format!("<span class=\"bad\">no answer</span>: {}", escape(&r.error)),
        };
        let actions = match admin {
            false => String::new(),
            true => {
                let mut forms = action_form(
                    viewer,
                    &format!("/cluster/{}/remove", r.id),
                    "Remove",
                    Some(&format!(
                        "Remove replica {} from the cluster? Stop its process afterwards.",
                        r.id
                    )),
                );
                if r.voter && status.leader_id != Some(r.id) {
                    forms.push_str(&action_form(
                        viewer,
                        &format!("/cluster/{}/lead", r.id),
                        "Hand leadership here",
                        Some(&format!("Hand leadership to replica {}?", r.id)),
                    ));
                }
                format!("<td>{forms}</td>")
            }
        };
        body.push_str(&format!(
            "<tr data-member=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{health}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{actions}</tr>",
            r.id,
            r.id,
            if r.voter { "voter" } else { "learner" },
            escape(&r.api_addr),
            escape(&r.peer_addr),
            console_link(&r.console_url),
            escape(if r.reachable { &r.role } else { "-" }),
            known(r.commit_index),
            known(r.applied_index),
            known(r.last_log_index),
            escape(&r.version)
        ));
    }
    body.push_str("</table>");
    if admin {
        body.push_str(&format!(
            "<h2>Add a replica</h2><p class=\"muted\">Start the new replica first (its own \
             config, an empty data dir, this cluster's CA): it joins as a learner, catches up, and \
             becomes a voter, as <code>scaleout cluster add-replica</code> does.</p>\
             <form method=\"post\" action=\"/cluster\" id=\"add-replica\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Id <input name=\"id\" size=\"4\" required></label> \
             <label>API address <input name=\"api_addr\" placeholder=\"host:7100\" required></label> \
             <label>Peer address <input name=\"peer_addr\" placeholder=\"host:7200\" required></label> \
             <label>Catch-up limit (s) <input name=\"catch_up_secs\" value=\"60\" size=\"4\"></label> \
             <button>Add</button></form>",
            escape(viewer.csrf)
        ));
    } else {
        body.push_str("<p class=\"muted\">Adding and removing replicas needs the admin role.</p>");
    }
    page("Cluster", Some(viewer), None, &body)
}

/// A membership change asked of a replica that does not lead: where to make it.
pub fn not_leader(viewer: &Viewer<'_>, what: &str, leader_console: Option<&str>) -> String {
    let go = match leader_console {
        Some(url) => format!(
            "Open the leader's console, <a href=\"{0}/cluster\">{0}</a>, and make it there.",
            escape(url)
        ),
        None => {
            "No leader is known now (an election is under way); try again in a moment.".to_string()
        }
    };
    let body = format!(
        "<h1>{}</h1><p class=\"bad\">Membership changes and hand-overs are made by the leader, \
         and this replica does not lead. {go}</p><p><a href=\"/cluster\">Back</a></p>",
        escape(what)
    );
    page(what, Some(viewer), None, &body)
}

/// A request the cluster turned down (a bad form, a job that does not exist), with its reason.
pub fn rejected(viewer: &Viewer<'_>, what: &str, reason: &str) -> String {
    let body = format!(
        "<h1>{}</h1><p class=\"bad\">{}</p><p><a href=\"/\" data-back>Back</a></p>",
        escape(what),
        escape(reason)
    );
    page(what, Some(viewer), None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::{JobCounts, ReplicaStatus};

    fn viewer(role: &Role) -> Viewer<'_> {
        Viewer { role, csrf: "c5rf" }
    }

    fn status(reachable: [bool; 3]) -> ClusterStatusResponse {
        ClusterStatusResponse {
            leader_id: Some(2),
            leader_api_addr: "127.0.0.1:7102".into(),
            term: 4,
            answered_by: 2,
            replicas: (1..=3)
                .map(|id| ReplicaStatus {
                    id,
                    api_addr: format!("127.0.0.1:710{id}"),
                    reachable: reachable[id as usize - 1],
                    role: if id == 2 { "leader" } else { "follower" }.into(),
                    voter: true,
                    version: "0.1.0".into(),
                    error: "refused <b>".into(),
                    ..Default::default()
                })
                .collect(),
            job_counts: Some(JobCounts {
                queued: 3,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_overview_names_the_leader_every_replica_and_the_counts() {
        let role = Role::Operator("ops".into());
        let html = overview(&viewer(&role), &status([true, true, true]), None, &[]);
        assert!(html.contains("Leader: <strong>replica 2"), "{html}");
        assert!(html.contains("data-replica=\"3\""), "{html}");
        assert!(html.contains("<td>3</td>"), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""), "{html}");
        assert!(
            html.contains("value=\"c5rf\""),
            "the sign-out form carries the CSRF token"
        );
        assert!(!html.contains("NO MAJORITY"));
    }

    #[test]
    fn the_overview_charts_the_hour_with_leader_changes_marked() {
        use super::super::history::LeaderChange;
        let role = Role::Operator("ops".into());
        let mut hour: Vec<Minute> = (0..60)
            .map(|i| Minute {
                start_ms: i * 60_000,
                ..Minute::default()
            })
            .collect();
        hour[58].submitted = 40;
        hour[58].completed = 10;
        hour[59].queue_depth = 30;
        hour[59].leader_changes.push(LeaderChange {
            at_ms: 59 * 60_000 + 30_000,
            term: 5,
            leader: Some(3),
        });
        let html = overview(&viewer(&role), &status([true, true, true]), None, &hour);
        assert!(html.contains("id=\"chart-jobs\"") && html.contains("id=\"chart-queue\""));
        assert!(html.contains("<title>40 submitted</title>"), "{html}");
        assert!(html.contains("<title>10 completed</title>"), "{html}");
        assert!(
            !html.contains("0 failed</title>"),
            "empty bars are not drawn"
        );
        // The largest value tops the axis: the submitted bar is the chart's full height.
        assert!(html.contains(&format!("height=\"{CHART_HEIGHT}\"><title>40 submitted")));
        // Marked in both charts, half-way through its minute.
        let mark = format!("x1=\"{}\"", CHART_LEFT + 59 * CHART_STEP + CHART_STEP / 2);
        assert_eq!(html.matches(&mark).count(), 2, "{html}");
        assert!(html.contains("term 5: replica 3 leads"), "{html}");
        assert!(html.contains("class=\"depth\" points=\""));
    }

    #[test]
    fn without_a_majority_the_overview_says_so_first_and_text_is_escaped() {
        let role = Role::Admin("<script>".into());
        let html = overview(&viewer(&role), &status([false, true, false]), None, &[]);
        let alert = html.find("NO MAJORITY").expect("the banner");
        assert!(alert < html.find("Leader:").expect("the leader line"));
        assert!(
            !html.contains("<script>") && html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("refused &lt;b&gt;"), "{html}");
    }

    #[test]
    fn job_and_worker_pages_carry_their_actions_and_a_notice_goes_first() {
        let role = Role::Admin("admin".into());
        let sleeper = Job {
            id: 7,
            state: crate::pb::v1::JobState::Running as i32,
            spec: Some(crate::pb::v1::JobSpec {
                argv: vec!["/bin/sleep".into(), "600".into()],
                name: "<sleeper>".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let html = job(&viewer(&role), &sleeper, &[], 0);
        assert!(html.contains("action=\"/jobs/7/cancel\""), "{html}");
        assert!(html.contains("&lt;sleeper&gt;") && !html.contains("<sleeper>"));
        let filter = JobsFilter {
            name: "sleep er".into(),
            ..JobsFilter::default()
        };
        let listed = jobs(
            &viewer(&role),
            std::slice::from_ref(&sleeper),
            Some(JobState::Running),
            &filter,
            7,
        );
        assert!(
            listed.contains("href=\"/jobs?state=running&amp;name=sleep%20er&amp;after=7\""),
            "{listed}"
        );
        assert!(
            listed.contains("<option value=\"running\" selected>"),
            "{listed}"
        );
        assert!(
            listed.contains("name=\"name\" value=\"sleep er\""),
            "{listed}"
        );
        let noted = with_notice(html, "from a follower");
        assert!(noted.contains("<main><p class=\"muted\" id=\"notice\">from a follower</p>"));
        let worker = Worker {
            info: Some(crate::pb::v1::WorkerInfo {
                worker_id: "0b5c".into(),
                display_name: "etl-1".into(),
                ..Default::default()
            }),
            enabled: true,
            online: true,
            ..Default::default()
        };
        let html = workers(&viewer(&role), &[worker], 0);
        for action in ["enable", "disable", "drain", "remove"] {
            assert!(html.contains(&format!("/workers/0b5c/{action}")), "{html}");
        }
        assert!(html.contains("data-confirm="), "drain and remove ask first");
    }

    #[test]
    fn the_overview_counts_workers_and_shows_each_replicas_lag() {
        let role = Role::Operator("ops".into());
        let mut status = status([true, true, true]);
        status.replicas[1].last_log_index = Some(120);
        status.replicas[0].applied_index = Some(100);
        status.replicas[1].applied_index = Some(120);
        let worker = |online, enabled, draining, running: &[u64]| Worker {
            online,
            enabled,
            draining,
            running_jobs: running.to_vec(),
            ..Default::default()
        };
        let workers = [
            worker(true, true, false, &[4, 5]),
            worker(true, true, true, &[6]),
            worker(true, false, false, &[]),
            worker(false, true, false, &[]),
        ];
        let html = overview(&viewer(&role), &status, Some(&workers), &[]);
        assert!(
            html.contains(
                "3 online</a> (1 taking tasks, 1 draining, 1 disabled), 1 offline; 3 tasks running"
            ),
            "{html}"
        );
        let row = |id: u64| {
            let start = html.find(&format!("data-replica=\"{id}\"")).expect("row");
            html[start..start + html[start..].find("</tr>").expect("end")].to_string()
        };
        assert!(
            row(1).contains("<td>20</td>"),
            "20 entries behind: {}",
            row(1)
        );
        assert!(row(2).contains("<td>0</td>"), "{}", row(2));
        assert!(row(3).contains("<td>-</td>"), "not known: {}", row(3));
    }

    #[test]
    fn a_jobs_attempts_are_drawn_on_its_time_axis() {
        let role = Role::Operator("ops".into());
        let attempt = |number, started, ended, outcome: crate::pb::v1::AttemptOutcome| {
            crate::pb::v1::Attempt {
                number,
                worker_id: "0b5c1234-aaaa".into(),
                lease_token: u64::from(number) + 10,
                started_at_ms: started,
                ended_at_ms: ended,
                outcome: outcome as i32,
                ..Default::default()
            }
        };
        let retried = Job {
            id: 9,
            state: crate::pb::v1::JobState::Running as i32,
            created_at_ms: 1_000,
            attempts: vec![
                attempt(1, 1_000, 4_000, crate::pb::v1::AttemptOutcome::Failed),
                attempt(2, 5_000, 0, crate::pb::v1::AttemptOutcome::Unspecified),
            ],
            ..Default::default()
        };
        let html = job(&viewer(&role), &retried, &[], 7_000);
        assert!(html.contains("id=\"timeline\""), "{html}");
        // 6 s on 600 px: the failed attempt spans its first half, the running one to now.
        assert!(
            html.contains("class=\"failed\" x=\"90\" y=\"3\" width=\"300\""),
            "{html}"
        );
        assert!(
            html.contains("class=\"submitted\" x=\"490\" y=\"25\" width=\"200\""),
            "{html}"
        );
        assert!(
            html.contains("attempt 2 on 0b5c1234-aaaa (lease 12)"),
            "{html}"
        );
        assert!(html.contains(", running</title>"), "{html}");
    }

    #[test]
    fn a_refusal_names_what_is_needed_and_who_asked() {
        let role = Role::Operator("ops".into());
        let html = refused(&viewer(&role), "Draining a worker", "the admin role");
        assert!(
            html.contains(
                "Draining a worker needs the admin role; you are signed in as operator ops"
            ),
            "{html}"
        );
    }
}
