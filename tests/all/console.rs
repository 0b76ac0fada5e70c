//! The web console at `/ui`, over HTTP with the real binary: signing in with a token, the runs a
//! tenant may see and no other, a run's bundle as a verified timeline with everything a guest
//! or a caller wrote escaped, the same 404 for another tenant's run as for none, an admin's read
//! of another tenant's run audited, and a tampered bundle shown as one.

use crate::Guild;
use crate::daemon::{ALICE, BOB, Counter, Daemon, ROOT, Reply, config_file, three_tenants};
use guild_test_artifacts::{ECHO, HASH, HTTP_GET};
use serde_json::json;
use std::path::Path;

fn config() -> String {
    config_with("")
}

/// The three tenants, echo, and `tools` (more `[[tools]]` entries).
fn config_with(tools: &str) -> String {
    three_tenants(&format!("{tools}\n[[tools]]\npath = \"{ECHO}\"\n"))
}

/// Sign in with `token`; the cookie to send with each page.
fn sign_in(daemon: &Daemon, token: &str) -> String {
    let form = format!("token={token}");
    let reply = daemon.call_with(
        "POST",
        "/ui/login",
        "",
        form.as_bytes(),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(reply.status, 303, "{reply:?}");
    assert_eq!(reply.headers.get("location").map(String::as_str), Some("/ui/runs"));
    let cookie = reply.headers.get("set-cookie").expect("a cookie").clone();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    cookie.split(';').next().expect("name=value").to_string()
}

fn get(daemon: &Daemon, path: &str, cookie: &str) -> Reply {
    daemon.call_with("GET", path, "", b"", &[("cookie", cookie)])
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[test]
fn a_tenant_sees_its_own_runs_as_verified_timelines_and_another_tenants_run_is_the_same_404_as_none() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "alpha\n")]);
    let host_dir = data.path().display().to_string();
    let tools = format!("[[tools]]\npath = \"{HASH}\"\n[[tools.mounts]]\nhost = \"{host_dir}\"\nguest = \"/data\"\n");
    let file = config_file(guild.home(), &config_with(&tools));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let hostile = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    let run = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": hostile}}));
    assert_eq!(run.status, 200, "{run:?}");
    let run_id = run.json()["id"].as_str().expect("run id").to_string();

    // Not signed in: to the form; a wrong token: refused there, no cookie.
    let anonymous = daemon.call_with("GET", "/ui/runs", ALICE, b"", &[]);
    assert_eq!(anonymous.status, 303, "a bearer header is not a console session: {anonymous:?}");
    assert_eq!(anonymous.headers.get("location").map(String::as_str), Some("/ui/login"));
    let wrong = daemon.call_with(
        "POST",
        "/ui/login",
        "",
        b"token=nope",
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(wrong.status, 401);
    assert!(!wrong.headers.contains_key("set-cookie"));
    assert!(text(&wrong).contains("not accepted"), "{wrong:?}");

    let alice = sign_in(&daemon, ALICE);
    let runs = get(&daemon, "/ui/runs", &alice);
    assert_eq!(runs.status, 200, "{runs:?}");
    let policy = runs.headers.get("content-security-policy").expect("a CSP");
    assert!(policy.contains("default-src 'none'") && !policy.contains("script-src"), "no script at all: {policy}");
    assert_eq!(runs.headers.get("x-content-type-options").map(String::as_str), Some("nosniff"));
    assert!(text(&runs).contains(&run_id), "alice's run is listed");
    for (filter, listed) in [
        ("tool=nothing-by-this-name", false),
        ("tool=echo&status=succeeded&outcome=output&revision=1&since_min=15", true),
        ("outcome=limit", false),
        ("revision=2", false),
        ("status=running", false),
    ] {
        let page = text(&get(&daemon, &format!("/ui/runs?{filter}"), &alice));
        assert_eq!(page.contains(&run_id), listed, "{filter}: {page}");
    }

    assert!(!text(&runs).contains("id=\"node\""), "the node's state is an admin's");
    // Tools: what the operator granted, the host side of a directory for an admin only.
    let tools_page = text(&get(&daemon, "/ui/tools", &alice));
    assert!(tools_page.contains("/data") && !tools_page.contains(&host_dir), "{tools_page}");
    let page = get(&daemon, &format!("/ui/runs/{run_id}"), &alice);
    assert_eq!(page.status, 200, "{page:?}");
    let html = text(&page);
    assert!(html.contains("Verified"), "the bundle's verdict: {html}");
    assert!(html.contains("Timeline") && html.contains("class=\"event "), "its events: {html}");
    assert!(!html.contains("<script") && !html.contains("<img"), "what the caller sent is escaped: {html}");
    assert!(html.contains("&lt;script&gt;"), "and shown: {html}");

    // Bob sees none of it: the list leaves it out, the page is the same 404 as a run that never
    // existed (byte for byte).
    let bob = sign_in(&daemon, BOB);
    assert!(!text(&get(&daemon, "/ui/runs", &bob)).contains(&run_id));
    let theirs = get(&daemon, &format!("/ui/runs/{run_id}"), &bob);
    let none = get(&daemon, &format!("/ui/runs/{}", "0".repeat(32)), &bob);
    assert_eq!((theirs.status, none.status), (404, 404));
    assert_eq!(theirs.body, none.body);
    let download = get(&daemon, &format!("/ui/runs/{run_id}/bundle"), &bob);
    let no_download = get(&daemon, &format!("/ui/runs/{}/bundle", "0".repeat(32)), &bob);
    assert_eq!((download.status, &download.body), (404, &no_download.body), "the bundle's download");
    let replayed = daemon.call_with("POST", &format!("/ui/runs/{run_id}/replay"), "", b"", &[("cookie", &bob)]);
    assert_eq!((replayed.status, &replayed.body), (404, &none.body), "replay");

    // An admin sees every tenant's runs, and reading one of them is audited.
    let root = sign_in(&daemon, ROOT);
    let admin_runs = text(&get(&daemon, "/ui/runs", &root));
    assert!(admin_runs.contains(&run_id) && admin_runs.contains("id=\"node\""), "{admin_runs}");
    assert!(text(&get(&daemon, "/ui/tools", &root)).contains(&host_dir), "an admin sees the host side");
    assert_eq!(get(&daemon, &format!("/ui/runs/{run_id}"), &root).status, 200);
    let audit = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    assert!(
        audit.lines().any(|l| l.contains("admin_read") && l.contains(&run_id)),
        "the admin's read is in the audit log"
    );

    // The cookie names a session, not the token; a second cookie of that name (planted by a
    // page on another port of this host) makes neither count.
    assert!(!alice.contains(ALICE), "{alice}");
    let planted = format!("{alice}; {bob}");
    assert_eq!(get(&daemon, "/ui/runs", &planted).status, 303);
    // A form posted from another origin is refused; the same origin's is taken.
    let foreign = [("cookie", alice.as_str()), ("origin", "http://127.0.0.1:1")];
    let refused = daemon.call_with("POST", &format!("/ui/runs/{run_id}/replay"), "", b"", &foreign);
    assert_eq!(refused.status, 403, "{refused:?}");
    let cross_site = [("cookie", alice.as_str()), ("sec-fetch-site", "same-site")];
    assert_eq!(daemon.call_with("POST", "/ui/logout", "", b"", &cross_site).status, 403);
    // A tenant's audit view has only its records, numbered among them, and no count of the rest.
    let audit = text(&get(&daemon, "/ui/audit", &bob));
    assert!(audit.contains("The chain verifies") && !audit.contains("records, head"), "{audit}");
    assert!(!audit.contains(&run_id), "{audit}");
    let audit = text(&get(&daemon, "/ui/audit", &root));
    assert!(audit.contains("records, head") && audit.contains(&run_id), "{audit}");

    // Signing out clears the cookie and ends the session: the old cookie no longer signs in.
    let host = format!("127.0.0.1:{}", daemon.port);
    let origin = format!("http://{host}");
    let same = [("cookie", alice.as_str()), ("origin", origin.as_str()), ("host", host.as_str())];
    let out = daemon.call_with("POST", "/ui/logout", "", b"", &same);
    assert_eq!(out.status, 303, "{out:?}");
    assert!(out.headers.get("set-cookie").is_some_and(|c| c.contains("Max-Age=0")), "{out:?}");
    assert_eq!(get(&daemon, "/ui/runs", &alice).status, 303);
}

/// Flip one character of every copy of `marker` in the store's packs (the daemon stopped); how
/// many were flipped.
fn tamper(home: &Path, marker: &str) -> usize {
    let mut edited = 0;
    for pack in std::fs::read_dir(home.join("store/packs")).expect("packs").flatten() {
        let mut bytes = std::fs::read(pack.path()).expect("pack");
        let found: Vec<usize> = bytes
            .windows(marker.len())
            .enumerate()
            .filter(|(_, w)| *w == marker.as_bytes())
            .map(|(at, _)| at)
            .collect();
        for at in &found {
            bytes[*at] = b'C';
        }
        edited += found.len();
        std::fs::write(pack.path(), bytes).expect("write pack");
    }
    edited
}

#[test]
fn a_bundle_edited_in_the_store_is_shown_as_failing_verification() {
    let guild = Guild::new();
    let file = config_file(guild.home(), &config());
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let marker = "console-tamper-marker-0123456789";
    let run = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": marker}}));
    let run_id = run.json()["id"].as_str().expect("run id").to_string();
    assert_eq!(daemon.terminate(), Some(0));
    assert!(tamper(guild.home(), marker) >= 1, "the output is in a pack");
    // The run is restored from the audit log; its bundle no longer verifies, and says so.
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let alice = sign_in(&daemon, ALICE);
    let page = get(&daemon, &format!("/ui/runs/{run_id}"), &alice);
    assert_eq!(page.status, 200, "{page:?}");
    let html = text(&page);
    assert!(html.contains("Does not verify"), "{html}");
    assert!(!html.contains("Verified:"), "{html}");
}

/// The console in a real browser (Debian's headless Chromium, driven by Playwright from
/// tests/console/browser.mjs): sign in, the run's timeline with its HTTP exchange and log line,
/// "Replay now" says identical, a tampered bundle fails, another tenant's run is 404 by URL, and
/// `guild bundle inspect --html`'s file opens with no server and shows the same events.
/// Screenshots of each page are written to `target/console-screenshots/`.
#[test]
fn in_a_real_browser_a_tenant_signs_in_reads_a_run_replays_it_and_cannot_open_anothers() {
    let upstream = Counter::start();
    let guild = Guild::new();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let tools = format!(
        "[[tools]]\npath = \"{HTTP_GET}\"\nallow_hosts = [\"{rule}\"]\nsecrets = [{{ name = \"TOKEN\", to = \"{rule}\" }}]\n\n\
         [secrets]\nTOKEN = \"env:CONSOLE_SECRET\"\n"
    );
    let file = config_file(guild.home(), &config_with(&tools));
    let secret = "s3cr3t-value-the-console-never-shows";
    let env = [("CONSOLE_SECRET", secret)];
    let daemon = Daemon::start(&guild, &["--config", &file], &env);
    let input = json!({"url": upstream.url(), "headers": {"authorization": "Bearer {{secret:TOKEN}}"}});
    let fetched = daemon.run(ALICE, json!({"tool": "http-get", "input": input})).json();
    assert_eq!(fetched["status"], "succeeded", "{fetched}");
    let run_http = fetched["id"].as_str().expect("run id").to_string();
    // The exchange shows the secret as its placeholder, never its value.
    let alice = sign_in(&daemon, ALICE);
    let html = text(&get(&daemon, &format!("/ui/runs/{run_http}"), &alice));
    assert!(html.contains("Bearer {{secret:TOKEN}}"), "{html}");
    assert!(!html.contains(secret), "{html}");
    let bundle = fetched["bundle"].as_str().expect("bundle").to_string();
    let marker = "console-browser-tamper-0123456789";
    let echoed = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": marker}})).json();
    let run_tampered = echoed["id"].as_str().expect("run id").to_string();
    assert_eq!(daemon.terminate(), Some(0));

    // The auditor's file, written before the store is touched.
    let report = guild.home().join("report.html");
    let wrote = guild.run(&["bundle", "inspect", "--html", &bundle, "-o", &report.display().to_string()]);
    assert_eq!(wrote.code, 0, "{wrote:?}");
    let inspected = guild.run(&["bundle", "inspect", &bundle]);
    let events = inspected
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("effects")?.split_whitespace().next()?.parse::<usize>().ok())
        .expect("inspect counts the events");
    assert!(tamper(guild.home(), marker) >= 1);

    let daemon = Daemon::start(&guild, &["--config", &file], &env);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/").join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/browser.mjs");
    assert!(
        script.with_file_name("node_modules/playwright-core").is_dir(),
        "tests/console/node_modules is missing: run scripts/setup.sh (npm ci in tests/console)"
    );
    let output = std::process::Command::new("node")
        .arg(&script)
        .env("GUILD_URL", format!("http://127.0.0.1:{}", daemon.port))
        .env("ALICE_TOKEN", ALICE)
        .env("BOB_TOKEN", BOB)
        .env("RUN_HTTP", &run_http)
        .env("UPSTREAM_URL", upstream.url())
        .env("LOG_TEXT", format!("{} → 200", upstream.url()))
        .env("RUN_TAMPERED", &run_tampered)
        .env("REPORT_HTML", &report)
        .env("REPORT_EVENTS", events.to_string())
        .env("SHOTS", &shots)
        .output()
        .expect("node starts (Node.js 20 or later)");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("every page as expected"), "{said}");
    eprintln!("{said}");
    for page in ["runs", "run", "replay", "tampered", "tools", "audit", "report"] {
        assert!(shots.join(format!("{page}.png")).is_file(), "a screenshot of {page}");
    }
}

/// With `--redis`, an admin's runs list shows the shared queue, each worker with its slots and
/// lanes, and refusals; a followed list reloads itself.
#[test]
fn an_admin_sees_the_shared_queue_and_its_workers_and_can_follow_the_list() {
    let redis = crate::redis::RedisServer::start();
    let cache = tempfile::tempdir().expect("tempdir");
    let _worker = crate::redis::Worker::start(&redis.url(), cache.path(), "console-worker", 2);
    let guild = Guild::new();
    let file = config_file(guild.home(), &config());
    let daemon = Daemon::start(&guild, &["--redis", &redis.url(), "--config", &file], crate::redis::QUEUE_ENV);
    let run = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": "through redis"}}));
    assert_eq!(run.status, 200, "{run:?}");
    let run_id = run.json()["id"].as_str().expect("run id").to_string();
    let admin = sign_in(&daemon, ROOT);
    let page = text(&get(&daemon, "/ui/runs", &admin));
    assert!(page.contains("Redis queue:") && page.contains("completed"), "{page}");
    assert!(page.contains("console-worker"), "the worker is listed: {page}");
    // A job a worker ran opens by its id, from Redis, its bundle verified — for its tenant; for
    // another, the same 404 as a job that never was.
    let alice = sign_in(&daemon, ALICE);
    let job = text(&get(&daemon, &format!("/ui/runs/{run_id}"), &alice));
    assert!(job.contains("Verified") && job.contains("through redis"), "{job}");
    let bob = sign_in(&daemon, BOB);
    let theirs = get(&daemon, &format!("/ui/runs/{run_id}"), &bob);
    let none = get(&daemon, &format!("/ui/runs/{}", "1".repeat(32)), &bob);
    assert_eq!((theirs.status, &theirs.body), (404, &none.body));
    assert!(!text(&get(&daemon, "/ui/runs", &alice)).contains("Redis queue:"), "the queue's state is an admin's");
    let followed = get(&daemon, "/ui/runs?live=1", &admin);
    assert_eq!(followed.headers.get("refresh").map(String::as_str), Some("5"), "{followed:?}");
    assert!(text(&followed).contains("Stop following"));
}
