//! The web console in a real browser: headless Chromium driven through the DevTools protocol
//! (a WebSocket, JSON commands), against a real local cluster. A person's session, end to end:
//! sign in as operator, see the replicas and the leader, submit a job through the form and
//! watch it succeed with its log line, cancel a running job, be refused a drain with the role
//! named; sign in as admin and drain the worker; kill the leader and watch the open page name
//! the new one without a reload. Each step saves a screenshot under
//! `target/tmp/console-screenshots/`.
//!
//! Needs Chromium (Debian's `chromium`; `SCALEOUT_CHROMIUM` names another binary). Without one
//! the test says so on one line and passes, unless `SCALEOUT_REQUIRE_BROWSER` is set (CI sets
//! it and installs the browser).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use scaleout::harness::{wait_for_workers, ClusterOptions, LocalCluster, WorkerOptions};
use scaleout::tls::Role;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SETTLE: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// The Chromium binary to drive, if this machine has one.
fn chromium() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os("SCALEOUT_CHROMIUM") {
        return Some(PathBuf::from(named));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// A headless Chromium with one page, killed when dropped.
struct Browser {
    process: Child,
    _profile: tempfile::TempDir,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Browser {
    async fn launch(binary: &Path, shots: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("a profile dir");
        let process = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                // The cluster's CA is a test CA: the TLS is real, the trust is not the point.
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Chromium starts");
        // Chromium writes the port it chose and the browser's path once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + SETTLE;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            assert!(Instant::now() < deadline, "Chromium did not open DevTools");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("DevTools WebSocket");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        let mut browser = Browser {
            process,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
            shots,
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("a target").to_string();
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        let session = browser.session.clone();
        browser.send(Some(&session), "Page.enable", json!({})).await;
        browser
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("DevTools send");
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools open")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("{method} failed: {error}");
            }
            return answer["result"].clone();
        }
    }

    async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// Opens `url` and waits until it has loaded.
    async fn goto(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
        self.wait_for(&format!(
            "document.readyState === 'complete' && location.href === {}",
            json!(url)
        ))
        .await;
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(thrown) = result.get("exceptionDetails") {
            panic!("{expression} threw: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page.
    async fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + SETTLE;
        loop {
            // During a navigation the expression may run in the page that is going away.
            let result = self
                .page(
                    "Runtime.evaluate",
                    json!({"expression": format!("!!({condition})"), "returnByValue": true}),
                )
                .await;
            if result["result"]["value"] == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.text().await;
                panic!("the page never showed {condition}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What the page shows, as text.
    async fn text(&mut self) -> String {
        let value = self
            .eval("document.body ? document.body.innerText : ''")
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    /// Saves the page as `<name>.png`.
    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .page("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot saved");
        eprintln!("screenshot: {}", path.display());
    }

    /// Signs in on `console` with `token`.
    async fn sign_in(&mut self, console: &str, token: &str) {
        self.goto(&format!("https://{console}/signin")).await;
        self.eval(&format!(
            "document.querySelector('textarea[name=token]').value = {};\
             document.querySelector('form[action=\"/signin\"]').submit();",
            json!(token)
        ))
        .await;
        self.wait_for("location.pathname === '/' && document.getElementById('leader')")
            .await;
    }

    /// Clicks the button of the form posting to `action`, answering yes to its question.
    async fn press(&mut self, action: &str) {
        self.eval(&format!(
            "window.confirm = () => true;\
             document.querySelector('form[action={}] button').click();",
            json!(action)
        ))
        .await;
    }
}

fn token_for(cluster: &LocalCluster, role: &Role) -> String {
    cluster
        .console_token(role, Duration::from_secs(3600))
        .expect("a token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("SCALEOUT_REQUIRE_BROWSER").is_none(),
            "SCALEOUT_REQUIRE_BROWSER is set and no Chromium was found"
        );
        // Written past the test harness's capture, so a plain `cargo test` shows it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "browser test skipped: no Chromium on this machine (apt install chromium, or set \
             SCALEOUT_CHROMIUM)"
        );
        return;
    };
    scaleout::tls::install_crypto_provider();
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("cluster");
    let (leader, _) = cluster.wait_for_leader(SETTLE).await.expect("a leader");
    cluster
        .start_worker(WorkerOptions::fast("browser-worker"))
        .expect("a worker");
    let client = cluster.client().expect("client");
    wait_for_workers(&client, 1, SETTLE)
        .await
        .expect("the worker online");
    // The page is served by a follower: its reads and actions go through the leader, and it
    // outlives the leader's kill.
    let follower = cluster.follower_of(leader).expect("a follower");
    let console = cluster
        .replica(follower)
        .expect("replica")
        .console_addr
        .clone()
        .expect("a console");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let mut browser = Browser::launch(&chromium, shots.clone()).await;

    // Operator: the overview names the three replicas and the leader.
    browser
        .sign_in(
            &console,
            &token_for(&cluster, &Role::Operator("operator".into())),
        )
        .await;
    browser
        .wait_for(&format!(
            "document.querySelectorAll('#replicas tr[data-replica]').length === 3 && \
             document.getElementById('leader').innerText.includes('replica {leader}')"
        ))
        .await;
    browser.screenshot("1-operator-overview").await;

    // Submit a job through the form; its page follows it to succeeded and shows its log.
    browser.goto(&format!("https://{console}/jobs")).await;
    browser
        .eval(
            "{ const form = document.getElementById('submit');\
             form.querySelector('[name=name]').value = 'hello-browser';\
             form.querySelector('[name=argv]').value = '/bin/echo\\nhello from the browser';\
             form.querySelector('button').click(); }",
        )
        .await;
    browser
        .wait_for("/^\\/jobs\\/\\d+$/.test(location.pathname)")
        .await;
    browser
        .wait_for(
            "document.getElementById('state').innerText === 'succeeded' && \
             document.getElementById('log').innerText.includes('hello from the browser')",
        )
        .await;
    browser.screenshot("2-job-succeeded").await;

    // Cancel a running job from its page.
    browser.goto(&format!("https://{console}/jobs")).await;
    browser
        .eval(
            "{ const form = document.getElementById('submit');\
             form.querySelector('[name=name]').value = 'sleeper';\
             form.querySelector('[name=argv]').value = '/bin/sleep\\n600';\
             form.querySelector('button').click(); }",
        )
        .await;
    browser
        .wait_for(
            "/^\\/jobs\\/\\d+$/.test(location.pathname) && \
             document.getElementById('state').innerText === 'running'",
        )
        .await;
    let sleeper = browser.eval("location.pathname").await;
    let sleeper = sleeper.as_str().expect("a path").to_string();
    browser.press(&format!("{sleeper}/cancel")).await;
    browser
        .wait_for("document.getElementById('state').innerText === 'cancelled'")
        .await;
    browser.screenshot("3-job-cancelled").await;

    // The operator may not drain a worker: the refusal names the role needed.
    browser.goto(&format!("https://{console}/workers")).await;
    let worker_id = browser
        .eval("document.querySelector('#workers tr[data-worker] code').innerText")
        .await;
    let worker_id = worker_id.as_str().expect("a worker id").to_string();
    browser.press(&format!("/workers/{worker_id}/drain")).await;
    browser
        .wait_for(
            "document.body.innerText.includes('Draining a worker needs the admin role; you are \
             signed in as operator operator')",
        )
        .await;
    browser.screenshot("4-operator-drain-refused").await;

    // Admin: the drain goes through, and the live page shows it.
    browser.goto(&format!("https://{console}/")).await;
    browser.press("/signout").await;
    browser.wait_for("location.pathname === '/signin'").await;
    browser
        .sign_in(&console, &token_for(&cluster, &Role::Admin("admin".into())))
        .await;
    browser.goto(&format!("https://{console}/workers")).await;
    browser.press(&format!("/workers/{worker_id}/drain")).await;
    browser
        .wait_for(
            "location.pathname === '/workers' && \
             document.querySelector('#workers').innerText.includes('draining')",
        )
        .await;
    browser.screenshot("5-admin-drained").await;

    // The cluster page: every member with its console; the admin's membership forms.
    browser.goto(&format!("https://{console}/cluster")).await;
    browser
        .wait_for(
            "document.querySelectorAll('#members tr[data-member]').length === 3 && \
             document.getElementById('add-replica')",
        )
        .await;
    browser.screenshot("6-cluster").await;

    // Kill the leader: the open overview names the new one within seconds, without a reload
    // (the marker set in this page survives).
    browser.goto(&format!("https://{console}/")).await;
    browser.eval("window.keptOpen = 'yes'").await;
    // A second person has the leader's own console open.
    let leader_console = cluster
        .replica(leader)
        .expect("replica")
        .console_addr
        .clone()
        .expect("a console");
    let mut second = Browser::launch(&chromium, shots).await;
    second
        .sign_in(
            &leader_console,
            &token_for(&cluster, &Role::Operator("operator".into())),
        )
        .await;
    let killed_at = Instant::now();
    cluster.kill(leader).expect("kill the leader");
    browser
        .wait_for(&format!(
            "window.keptOpen === 'yes' && \
             /^replica \\d+ /.test(document.querySelector('#leader strong').innerText) && \
             !document.querySelector('#leader strong').innerText.startsWith('replica {leader} ')"
        ))
        .await;
    let shown_after = killed_at.elapsed();
    browser.screenshot("7-new-leader-after-kill").await;
    let text = browser.text().await;
    eprintln!("the open page named the new leader {shown_after:?} after the kill");
    assert!(
        shown_after < Duration::from_secs(10),
        "the page took {shown_after:?} to show the new leader"
    );
    assert!(!text.contains("panicked"), "{text}");

    // The page of the killed replica says it stopped answering and links the other consoles;
    // following one shows the new leader (the session cookie is the host's, any port).
    second
        .wait_for(
            "!document.getElementById('connection').hidden && \
             document.querySelectorAll('#connection a.elsewhere').length === 2",
        )
        .await;
    second.screenshot("8-killed-replica-page").await;
    second
        .eval("document.querySelector('#connection a.elsewhere').click()")
        .await;
    second
        .wait_for(&format!(
            "location.pathname === '/' && document.querySelector('#leader strong') && \
             /^replica \\d+ /.test(document.querySelector('#leader strong').innerText) && \
             !document.querySelector('#leader strong').innerText.startsWith('replica {leader} ')"
        ))
        .await;
}
