//! The console's pages, rendered on the server from what the API answered: pure functions from
//! the API's messages to HTML, escaped, with no script needed to read them. Live parts reload
//! themselves (the overview every few seconds), so a page left open follows a failover.

use crate::cli::screen::{job_counts_by_state, versions, Quorum};
use crate::pb::v1::ClusterStatusResponse;
use crate::tls::Role;

/// How often the overview reloads itself.
pub const OVERVIEW_REFRESH_SECS: u32 = 2;

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

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#1f3a5f;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #c8ced6;padding:.25em .6em;text-align:left}\
.alert{background:#b42318;color:#fff;padding:.6em 1em;font-weight:bold}\
.muted{color:#5b6470}.ok{color:#176b2c}.bad{color:#b42318;font-weight:bold}";

/// Who is signed in, as the page header shows it, and the session's CSRF token for its forms.
pub struct Viewer<'a> {
    pub role: &'a Role,
    pub csrf: &'a str,
}

/// A whole page: the header (navigation, who is signed in, sign out), then `body`.
pub fn page(
    title: &str,
    viewer: Option<&Viewer<'_>>,
    refresh_secs: Option<u32>,
    body: &str,
) -> String {
    let refresh = refresh_secs
        .map(|secs| format!("<meta http-equiv=\"refresh\" content=\"{secs}\">"))
        .unwrap_or_default();
    let who = match viewer {
        Some(viewer) => format!(
            "<a href=\"/\">Overview</a><form method=\"post\" action=\"/signout\">\
             <span>{}</span> <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Sign out</button></form>",
            escape(&viewer.role.to_string()),
            escape(viewer.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>{} · scaleout</title><style>{STYLE}</style></head><body>\
         <header><strong>scaleout</strong>{who}</header><main>{body}</main></body></html>",
        escape(title)
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
         <p class=\"muted\">This page tries again every {OVERVIEW_REFRESH_SECS} s.</p>",
        escape(error)
    );
    page("Overview", Some(viewer), Some(OVERVIEW_REFRESH_SECS), &body)
}

/// The overview: the majority, the leader, each replica, jobs by state, the outbox.
pub fn overview(viewer: &Viewer<'_>, status: &ClusterStatusResponse) -> String {
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
         <th>Reachable</th><th>Term</th><th>Commit</th><th>Applied</th><th>Version</th></tr>",
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
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.id,
            r.id,
            escape(&r.api_addr),
            escape(if r.reachable { &r.role } else { "-" }),
            r.term,
            known(r.commit_index),
            known(r.applied_index),
            escape(&r.version)
        ));
    }
    body.push_str("</table><h2>Jobs</h2><table id=\"jobs\"><tr>");
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
    page("Overview", Some(viewer), Some(OVERVIEW_REFRESH_SECS), &body)
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
        let html = overview(&viewer(&role), &status([true, true, true]));
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
    fn without_a_majority_the_overview_says_so_first_and_text_is_escaped() {
        let role = Role::Admin("<script>".into());
        let html = overview(&viewer(&role), &status([false, true, false]));
        let alert = html.find("NO MAJORITY").expect("the banner");
        assert!(alert < html.find("Leader:").expect("the leader line"));
        assert!(
            !html.contains("<script>") && html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("refused &lt;b&gt;"), "{html}");
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
