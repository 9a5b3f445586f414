//! The web console over HTTPS, page by page and action by action (status codes, sign-in, roles,
//! CSRF, no stack traces), against a real local cluster. Browser tests (Chromium) are separate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use scaleout::harness::{ClusterOptions, LocalCluster};
use scaleout::tls::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTLE: Duration = Duration::from_secs(60);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_scaleout"))
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request over TLS to `addr`, trusting `ca` (the cluster's CA).
async fn https(
    addr: &str,
    ca: &Path,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Answer {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(scaleout::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let host = addr.split(':').next().expect("host").to_string();
    let name = rustls::pki_types::ServerName::try_from(host).expect("server name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let body = form.unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if form.is_some() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tls.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(SETTLE, tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn token_for(cluster: &LocalCluster, role: &Role) -> String {
    cluster
        .console_token(role, Duration::from_secs(3600))
        .expect("a token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_see_the_cluster_and_sign_out() {
    scaleout::tls::install_crypto_provider();
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("cluster");
    let (leader, _) = cluster.wait_for_leader(SETTLE).await.expect("a leader");
    let follower = cluster.follower_of(leader).expect("a follower");
    let addr = cluster
        .replica(follower)
        .expect("replica")
        .console_addr
        .clone()
        .expect("a console");
    let ca = cluster
        .identity_paths(&Role::Operator("operator".into()))
        .expect("paths")
        .ca;
    let get = |path: &'static str, cookie: Option<String>| {
        let (addr, ca) = (addr.clone(), ca.clone());
        async move { https(&addr, &ca, "GET", path, cookie.as_deref(), None).await }
    };
    let post = |path: &'static str, cookie: Option<String>, form: String| {
        let (addr, ca) = (addr.clone(), ca.clone());
        async move { https(&addr, &ca, "POST", path, cookie.as_deref(), Some(&form)).await }
    };

    // Not signed in: every page sends to the sign-in page.
    let answer = get("/", None).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.header("location"), Some("/signin"));
    let answer = get("/signin", None).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("name=\"token\""), "{}", answer.body);

    // A wrong token is refused with the reason, and no trace of the server's insides.
    let answer = post("/signin", None, "token=sot1.a.b.c".into()).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("damaged"), "{}", answer.body);
    assert!(!answer.body.contains("panicked") && !answer.body.contains("src/"));

    // The operator's token signs in: a locked-down cookie, then the overview.
    let token = token_for(&cluster, &Role::Operator("operator".into()));
    let answer = post("/signin", None, format!("token={}", form_encode(&token))).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let cookie = answer.header("set-cookie").expect("a cookie").to_string();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().expect("name=value").to_string();
    let answer = get("/", Some(session.clone())).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .body
            .contains(&format!("Leader: <strong>replica {leader}")),
        "{}",
        answer.body
    );
    for id in 1..=3 {
        assert!(answer.body.contains(&format!("data-replica=\"{id}\"")));
    }
    assert!(
        answer.body.contains("operator operator"),
        "who is signed in"
    );

    // Every answer forbids framing and inline script; the script and stylesheet are files.
    let policy = answer.header("content-security-policy").unwrap_or_default();
    assert!(
        policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{answer:?}"
    );
    assert!(!answer.body.contains("<script>") && !answer.body.contains("style=\""));
    assert_eq!(
        answer.header("cache-control"),
        Some("no-store"),
        "{answer:?}"
    );
    let script = get("/static/console.js", None).await;
    assert_eq!(script.status, 200, "{script:?}");
    assert_eq!(script.header("cache-control"), Some("max-age=300"));
    assert!(script
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/javascript")));
    assert!(
        answer.body.contains("data-refresh=\"2\""),
        "the overview is live"
    );

    // A read on this follower is linearizable: a job the leader just acknowledged is on the
    // follower's page at once, read through the leader's read index (no notice of a read
    // from its own state).
    let client = cluster.client().expect("client");
    for n in 0..5 {
        let spec = scaleout::pb::v1::JobSpec {
            argv: vec!["/bin/true".into()],
            name: format!("read-{n}"),
            ..Default::default()
        };
        let id = client.submit_job(spec, None).await.expect("submit").job_id;
        let path = format!("/jobs/{id}");
        let page = https(&addr, &ca, "GET", &path, Some(&session), None).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.body.contains(&format!("read-{n}")), "{}", page.body);
        assert!(!page.body.contains("id=\"notice\""), "{}", page.body);
    }

    // Filters: by name (any case), paged across the scan; by tag; on the page too.
    let mut request = scaleout::pb::v1::ListJobsRequest {
        name_contains: "READ-".into(),
        limit: 2,
        ..Default::default()
    };
    let mut names = Vec::new();
    loop {
        let page = client.list_jobs_where(request.clone()).await.expect("list");
        assert!(page.jobs.len() <= 2);
        names.extend(
            page.jobs
                .iter()
                .map(|j| j.spec.clone().unwrap_or_default().name),
        );
        if page.next_after_id == 0 {
            break;
        }
        request.after_id = page.next_after_id;
    }
    assert_eq!(names, ["read-0", "read-1", "read-2", "read-3", "read-4"]);
    let none = client
        .list_jobs_where(scaleout::pb::v1::ListJobsRequest {
            tag: "nightly".into(),
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(none.jobs.is_empty() && none.next_after_id == 0, "{none:?}");
    // The same filters from the CLI: `job list --name`, with --limit following short pages.
    let job_list = |extra: &[&str]| {
        let output = std::process::Command::new(binary())
            .args(["job", "list", "--output", "json", "--endpoints"])
            .arg(cluster.endpoints().join(","))
            .args(cluster.cli_security_args())
            .args(extra)
            .output()
            .expect("run the CLI");
        assert!(output.status.success(), "{output:?}");
        let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        jobs.as_array()
            .expect("a list")
            .iter()
            .map(|job| job["name"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(job_list(&["--name", "READ-3"]), ["read-3"]);
    assert_eq!(
        job_list(&["--name", "read-", "--limit", "2"]),
        ["read-0", "read-1"]
    );
    assert!(job_list(&["--tag", "nightly"]).is_empty());
    let page = get("/jobs?name=read-3&state=", Some(session.clone())).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains(">read-3<") && !page.body.contains(">read-4<"),
        "{}",
        page.body
    );

    // The cluster page: every member with its addresses and console; the operator sees no
    // membership forms, and is refused a removal with the role named.
    let answer = get("/cluster", Some(session.clone())).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    for replica in &cluster.replicas {
        assert!(answer
            .body
            .contains(&format!("data-member=\"{}\"", replica.id)));
        let url = format!(
            "https://{}",
            replica.console_addr.as_deref().expect("console")
        );
        assert!(answer.body.contains(&url), "{url} in {}", answer.body);
    }
    assert!(!answer.body.contains("id=\"add-replica\""));
    let csrf = scaleout::console::session::csrf_for(&token);
    let answer = post(
        "/cluster/3/remove",
        Some(session.clone()),
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(
        answer
            .body
            .contains("Removing a replica needs the admin role; you are signed in as operator"),
        "{}",
        answer.body
    );

    // Signing out needs the page's CSRF token.
    let answer = post("/signout", Some(session.clone()), "csrf=guess".into()).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("CSRF"), "{}", answer.body);
    let answer = post("/signout", Some(session.clone()), format!("csrf={csrf}")).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert!(answer
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));

    // The admin's token works on another replica too: nothing is stored where it signed in.
    let leader_console = cluster
        .replica(leader)
        .expect("replica")
        .console_addr
        .clone()
        .expect("a console");
    let admin = token_for(&cluster, &Role::Admin("admin".into()));
    let answer = https(
        &leader_console,
        &ca,
        "GET",
        "/",
        Some(&format!("scaleout_session={admin}")),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("admin admin"));

    // Membership: the admin sees the forms; a follower sends them to the leader's console;
    // a bad form is refused with the reason; the leader hands leadership over.
    let admin_cookie = format!("scaleout_session={admin}");
    let admin_csrf = scaleout::console::session::csrf_for(&admin);
    let answer = get("/cluster", Some(admin_cookie.clone())).await;
    assert!(answer.body.contains("id=\"add-replica\""), "{answer:?}");
    let answer = post(
        "/cluster/3/lead",
        Some(admin_cookie.clone()),
        format!("csrf={admin_csrf}"),
    )
    .await;
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(
        answer
            .body
            .contains(&format!("href=\"https://{leader_console}/cluster\"")),
        "the leader's console is named: {}",
        answer.body
    );
    let on_leader = |method: &'static str, path: String, form: Option<String>| {
        let (addr, ca, cookie) = (leader_console.clone(), ca.clone(), admin_cookie.clone());
        async move { https(&addr, &ca, method, &path, Some(&cookie), form.as_deref()).await }
    };
    let answer = on_leader(
        "POST",
        "/cluster".into(),
        Some(format!(
            "csrf={admin_csrf}&id=4&api_addr=nowhere&peer_addr=127.0.0.1:1"
        )),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("API address"), "{}", answer.body);
    let answer = on_leader(
        "POST",
        format!("/cluster/{follower}/lead"),
        Some(format!("csrf={admin_csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let (new_leader, _) = cluster.wait_for_leader(SETTLE).await.expect("a leader");
    assert_eq!(new_leader, follower);
    let answer = on_leader("GET", "/cluster".into(), None).await;
    assert!(
        answer.body.contains(&format!("leader: replica {follower}")),
        "{}",
        answer.body
    );

    // The new leader's console (the one this test started on) adds a fourth replica, which
    // catches up and votes, then removes it.
    let id = cluster
        .configure_new_replica(scaleout::harness::ReplicaAddresses::local(4).expect("ports"))
        .expect("configure replica 4");
    cluster.restart(id).expect("start replica 4");
    let (api, peer) = {
        let r = cluster.replica(id).expect("replica 4");
        (r.api_addr.clone(), r.peer_addr.clone())
    };
    // Started as a person would before adding it: listening once its process is up.
    let deadline = std::time::Instant::now() + SETTLE;
    while tokio::net::TcpStream::connect(&peer).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "replica 4 never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = post(
        "/cluster",
        Some(admin_cookie.clone()),
        format!(
            "csrf={admin_csrf}&id={id}&api_addr={}&peer_addr={}&catch_up_secs=30",
            form_encode(&api),
            form_encode(&peer)
        ),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let page = get("/cluster", Some(admin_cookie.clone())).await;
    assert!(
        page.body.contains(&format!(
            "<tr data-member=\"{id}\"><td>{id}</td><td>voter</td>"
        )),
        "{}",
        page.body
    );
    let answer = post(
        "/cluster/4/remove",
        Some(admin_cookie.clone()),
        format!("csrf={admin_csrf}"),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let page = get("/cluster", Some(admin_cookie.clone())).await;
    assert!(!page.body.contains("data-member=\"4\""), "{}", page.body);
}

/// Waits until `path` on the console answers a page containing every one of `wanted`.
async fn wait_for_page(addr: &str, ca: &Path, cookie: &str, path: &str, wanted: &[&str]) -> String {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let answer = https(addr, ca, "GET", path, Some(cookie), None).await;
        if answer.status == 200 && wanted.iter().all(|w| answer.body.contains(w)) {
            return answer.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never showed {wanted:?}; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_workers_through_the_forms_with_the_roles_of_the_api() {
    use scaleout::harness::{wait_for_workers, WorkerOptions};
    scaleout::tls::install_crypto_provider();
    let mut cluster = LocalCluster::start(binary(), ClusterOptions::default()).expect("cluster");
    cluster.wait_for_leader(SETTLE).await.expect("a leader");
    cluster
        .start_worker(WorkerOptions::fast("console-worker"))
        .expect("a worker");
    let client = cluster.client().expect("client");
    wait_for_workers(&client, 1, SETTLE)
        .await
        .expect("the worker online");
    let worker_id = client.list_workers(false).await.expect("workers")[0]
        .info
        .clone()
        .expect("info")
        .worker_id;
    let addr = cluster.replicas[0].console_addr.clone().expect("a console");
    let ca = cluster
        .identity_paths(&Role::Operator("operator".into()))
        .expect("paths")
        .ca;
    let operator = token_for(&cluster, &Role::Operator("operator".into()));
    let (cookie, csrf) = (
        format!("scaleout_session={operator}"),
        scaleout::console::session::csrf_for(&operator),
    );
    let post = |path: String, cookie: String, form: String| {
        let (addr, ca) = (addr.clone(), ca.clone());
        async move { https(&addr, &ca, "POST", &path, Some(&cookie), Some(&form)).await }
    };

    // Submit through the form; the job page follows it to succeeded with its log line.
    let form = format!(
        "csrf={csrf}&name=hello-console&argv={}&max_attempts=1",
        form_encode("/bin/echo\nhello from the console")
    );
    let answer = post("/jobs".into(), cookie.clone(), form).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let job_path = answer
        .header("location")
        .expect("the job's page")
        .to_string();
    wait_for_page(
        &addr,
        &ca,
        &cookie,
        &job_path,
        &["id=\"state\">succeeded", "hello from the console"],
    )
    .await;
    let list = wait_for_page(
        &addr,
        &ca,
        &cookie,
        "/jobs?state=succeeded",
        &["hello-console"],
    )
    .await;
    assert!(list.contains(&format!("href=\"{job_path}\"")), "{list}");
    let by_worker = wait_for_page(
        &addr,
        &ca,
        &cookie,
        "/jobs?worker=console-worker",
        &["hello-console"],
    )
    .await;
    assert!(by_worker.contains(&job_path), "{by_worker}");
    let answer = https(
        &addr,
        &ca,
        "GET",
        "/jobs?worker=nobody",
        Some(&cookie),
        None,
    )
    .await;
    assert!(answer.body.contains("No jobs here"), "{answer:?}");

    // A long log: the page follows its end.
    let form = format!(
        "csrf={csrf}&name=chatty&argv={}",
        form_encode("/bin/sh\n-c\nseq 1 1200")
    );
    let answer = post("/jobs".into(), cookie.clone(), form).await;
    let chatty = answer
        .header("location")
        .expect("the job's page")
        .to_string();
    let page = wait_for_page(
        &addr,
        &ca,
        &cookie,
        &chatty,
        &["id=\"state\">succeeded", "] 1200\n"],
    )
    .await;
    assert!(page.contains("The last 1000 lines"), "{page}");
    assert!(
        page.contains("] 201\n") && !page.contains("] 200\n"),
        "{page}"
    );

    // Bad forms are refused with the reason; a form without the CSRF token is refused.
    let answer = post(
        "/jobs".into(),
        cookie.clone(),
        format!("csrf={csrf}&argv=true&max_attempts=x"),
    )
    .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("attempts"), "{}", answer.body);
    let answer = post("/jobs".into(), cookie.clone(), "argv=true".into()).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    let answer = https(&addr, &ca, "GET", "/jobs?state=nope", Some(&cookie), None).await;
    assert_eq!(answer.status, 400, "{answer:?}");

    // Cancel a running job from its page.
    let form = format!(
        "csrf={csrf}&name=sleeper&argv={}",
        form_encode("/bin/sleep\n600")
    );
    let answer = post("/jobs".into(), cookie.clone(), form).await;
    let sleeper = answer
        .header("location")
        .expect("the job's page")
        .to_string();
    wait_for_page(&addr, &ca, &cookie, &sleeper, &["id=\"state\">running"]).await;
    let answer = post(
        format!("{sleeper}/cancel"),
        cookie.clone(),
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    wait_for_page(&addr, &ca, &cookie, &sleeper, &["id=\"state\">cancelled"]).await;

    // Workers: an operator may look but not drain; the refusal names the role needed.
    let page = wait_for_page(&addr, &ca, &cookie, "/workers", &["console-worker"]).await;
    assert!(page.contains(&worker_id), "{page}");
    let drain = format!("/workers/{worker_id}/drain");
    let answer = post(drain.clone(), cookie.clone(), format!("csrf={csrf}")).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(
        answer
            .body
            .contains("Draining a worker needs the admin role; you are signed in as operator"),
        "{}",
        answer.body
    );
    let admin = token_for(&cluster, &Role::Admin("admin".into()));
    let admin_cookie = format!("scaleout_session={admin}");
    let admin_csrf = scaleout::console::session::csrf_for(&admin);
    let answer = post(drain, admin_cookie.clone(), format!("csrf={admin_csrf}")).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    wait_for_page(&addr, &ca, &admin_cookie, "/workers", &["online, draining"]).await;
    for (action, shown) in [
        ("disable", "online, disabled"),
        ("enable", "online, enabled"),
    ] {
        let answer = post(
            format!("/workers/{worker_id}/{action}"),
            admin_cookie.clone(),
            format!("csrf={admin_csrf}"),
        )
        .await;
        assert_eq!(answer.status, 303, "{action}: {answer:?}");
        wait_for_page(&addr, &ca, &admin_cookie, "/workers", &[shown]).await;
    }
    // The admin removes the worker once it is stopped (a running agent registers again).
    cluster
        .kill_worker("console-worker")
        .expect("stop the worker");
    let answer = post(
        format!("/workers/{worker_id}/remove"),
        admin_cookie.clone(),
        format!("csrf={admin_csrf}"),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let page = https(&addr, &ca, "GET", "/workers", Some(&admin_cookie), None).await;
    assert!(!page.body.contains(&worker_id), "{page:?}");
    for answer in [
        https(&addr, &ca, "GET", "/jobs/999999", Some(&cookie), None).await,
        post(
            format!("/workers/{worker_id}/explode"),
            admin_cookie.clone(),
            format!("csrf={admin_csrf}"),
        )
        .await,
    ] {
        assert_eq!(answer.status, 404, "{answer:?}");
        assert!(!answer.body.contains("panicked") && !answer.body.contains(".rs:"));
    }
}
