//! The web console at `/ui`: HTML rendered here (maud escapes every value it is given), one
//! stylesheet embedded in the binary, no script and nothing fetched from elsewhere, so it works
//! offline and its Content-Security-Policy can forbid scripts outright.
//!
//! Signing in takes the same tokens as the API (a tenant's static token, or an OAuth access
//! token where `[oauth]` is set). The browser is given an opaque session id, never the token, in
//! a cookie that only `/ui` is sent, `HttpOnly` and `SameSite=Strict`; each page authenticates
//! the session's token exactly as the API authenticates a `Bearer` header, so a token removed
//! from the config stops working at once. A form posted from another origin is refused. A page shows only what that principal may see: its own runs, and for an
//! admin every run (reading another tenant's run is audited, as through the API). Another
//! tenant's run gets the same 404 page as a run that does not exist.

use crate::auth::{AuthRejection, Places};
use crate::daemon::{Daemon, Hidden};
use crate::principal::Bearer;
use crate::runs::{RunEntry, RunState};
use crate::tenants::Tenant;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use guild_replay::Effect;
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;

/// The cookie that names a signed-in browser's session (an opaque id, never the token).
const SESSION_COOKIE: &str = "guild_console_session";
/// Signed-in browsers at once; a sign-in past this (after the expired are dropped) is refused.
pub const CONSOLE_SESSIONS_MAX: usize = 10_000;
/// Sessions one token may hold at once; a sign-in past it ends that token's oldest session.
pub const CONSOLE_SESSIONS_PER_TOKEN_MAX: usize = 16;
/// How long a console session lasts, seconds; then the browser signs in again.
pub const CONSOLE_SESSION_TTL_S: u64 = 8 * 3600;
/// Runs the list looks through for one page, newest first from its cursor: a filter that
/// matches little stops there instead of scanning every run kept.
pub const CONSOLE_RUNS_SCAN_MAX: usize = 10_000;
/// Replays one tenant may have running from the console at once.
pub const CONSOLE_REPLAYS_PER_TENANT_MAX: usize = 1;
/// Tape events a run's page lists; the rest are counted (`guild bundle inspect` shows them all).
pub const CONSOLE_EVENTS_SHOWN_MAX: usize = 2_000;
/// Audit views reading the log at once; another is answered 429.
pub const CONSOLE_AUDIT_READS_MAX: usize = 1;
/// Runs on one page of the runs list.
pub const CONSOLE_RUNS_PAGE: usize = 50;
/// A sign-in form's body is refused past this many bytes (a token is far shorter).
pub const CONSOLE_FORM_BYTES_MAX: usize = 16 * 1024;
/// A tape event's text (a log line, a URL, a header) is cut to this many characters on a page.
pub const CONSOLE_TEXT_CHARS_MAX: usize = 2_000;
/// A recorded HTTP body is shown on a run's page up to this many bytes (as text); a larger one
/// is named by its digest and size only.
pub const CONSOLE_BODY_BYTES_MAX: u64 = 64 * 1024;
/// Entries of a mounted or output tree listed on a run's page, all directories together.
pub const CONSOLE_TREE_ENTRIES_MAX: usize = 500;
/// Directories deep a tree is listed.
pub const CONSOLE_TREE_DEPTH_MAX: usize = 16;
/// Replays the console runs at once (each re-runs a tool); a press past this is answered 429.
pub const CONSOLE_REPLAYS_MAX: usize = 2;
/// Audit records on one page of the audit view.
pub const CONSOLE_AUDIT_PAGE: usize = 50;

/// The console's one stylesheet (also inlined into `guild bundle inspect --html` reports).
const STYLESHEET: &str = include_str!("console.css");

/// What every console answer carries: no script, no framing, no caching, no referrer sent away.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, under `/ui`.
pub(crate) fn routes() -> axum::Router<Arc<Daemon>> {
    axum::Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/console.css", get(stylesheet))
        .route(
            "/ui/login",
            get(login_form).post(login).layer(axum::extract::DefaultBodyLimit::max(CONSOLE_FORM_BYTES_MAX)),
        )
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/replay", post(replay_run))
        .route("/ui/runs/{id}/bundle", get(download_bundle))
        .route("/ui/tools", get(tools_page))
        .route("/ui/audit", get(audit_page))
        .route(
            "/ui/{*rest}",
            axum::routing::any(|| async {
                let body = html! { p role="alert" { "There is no such page. " a href="/ui/runs" { "Runs" } } };
                html_response(StatusCode::NOT_FOUND, page("Not found", None, body))
            }),
        )
        .layer(axum::middleware::from_fn(same_origin))
        .layer(axum::middleware::map_response(secured))
}

/// A POST (sign in, sign out, replay) from a page of another origin is refused 403: a browser
/// says where a request comes from (`Sec-Fetch-Site`, `Origin`), and another port of the same
/// host is another origin though it shares the cookies. A client that is no browser sends
/// neither and is no cross-site risk.
async fn same_origin(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if request.method() == axum::http::Method::POST && !from_this_origin(request.headers()) {
        let body = html! { p role="alert" { "This form was sent from another site's page, so it was not acted on." } };
        return html_response(StatusCode::FORBIDDEN, page("Refused", None, body));
    }
    next.run(request).await
}

fn from_this_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let authority = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, authority)| authority);
            authority.is_some() && authority == headers.get(header::HOST).and_then(|h| h.to_str().ok())
        }
    }
}

/// A signed-in browser: the token it signed in with, until when.
struct Session {
    token: String,
    expires_unix_ms: u64,
}

fn sessions() -> &'static std::sync::Mutex<std::collections::HashMap<String, Session>> {
    static SESSIONS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Session>>> =
        std::sync::OnceLock::new();
    SESSIONS.get_or_init(Default::default)
}

/// A new session for `token`: its id, or `None` when [`CONSOLE_SESSIONS_MAX`] are open.
fn open_session(token: &str) -> Option<String> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).ok()?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let now = guild_queue::now_unix_ms();
    let mut sessions = sessions().lock().unwrap_or_else(|p| p.into_inner());
    // One token cannot fill the table for everyone: its oldest session makes room.
    let mine: Vec<(String, u64)> =
        sessions.iter().filter(|(_, s)| s.token == token).map(|(id, s)| (id.clone(), s.expires_unix_ms)).collect();
    if mine.len() >= CONSOLE_SESSIONS_PER_TOKEN_MAX
        && let Some((oldest, _)) = mine.iter().min_by_key(|(_, expires)| *expires)
    {
        sessions.remove(oldest);
    }
    if sessions.len() >= CONSOLE_SESSIONS_MAX {
        sessions.retain(|_, s| s.expires_unix_ms > now);
    }
    if sessions.len() >= CONSOLE_SESSIONS_MAX {
        return None;
    }
    let expires_unix_ms = now + CONSOLE_SESSION_TTL_S * 1000;
    sessions.insert(id.clone(), Session { token: token.to_string(), expires_unix_ms });
    Some(id)
}

/// The token session `id` signed in with, while it lasts.
fn session_token(id: &str) -> Option<String> {
    let mut sessions = sessions().lock().unwrap_or_else(|p| p.into_inner());
    let session = sessions.get(id)?;
    if session.expires_unix_ms <= guild_queue::now_unix_ms() {
        sessions.remove(id);
        return None;
    }
    Some(session.token.clone())
}

/// The headers every console answer carries.
async fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it a browser sends `Origin: null` on a form's POST, which the same-origin
    // check then refuses.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], STYLESHEET)
        .into_response()
}

/// The signed-in principal, authenticated from the console's cookie as the API authenticates a
/// `Bearer` header; a page asked for without one is sent to the sign-in form.
pub(crate) struct Viewer {
    tenant: Arc<Tenant>,
    bearer: Bearer,
    _places: Places,
}

/// Why a page was not shown to a visitor.
pub(crate) enum NotSignedIn {
    /// No token, or one no longer accepted: sign in.
    SignIn,
    /// The token is fine but the server cannot take the request now.
    Refused(AuthRejection),
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/ui/login").into_response(),
            Self::Refused(rejection) => {
                let status = rejection.status();
                let message = rejection.message();
                html_response(status, page("Not now", None, html! { p role="alert" { (message) } }))
            }
        }
    }
}

impl FromRequestParts<Arc<Daemon>> for Viewer {
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, daemon: &Arc<Daemon>) -> Result<Self, NotSignedIn> {
        let session = cookie(&parts.headers, SESSION_COOKIE).ok_or(NotSignedIn::SignIn)?;
        let token = session_token(session).ok_or(NotSignedIn::SignIn)?;
        let (tenant, bearer) = signed_in(daemon, &token).await?;
        let places = crate::auth::places(daemon, &tenant, &bearer).map_err(NotSignedIn::Refused)?;
        Ok(Self { tenant, bearer, _places: places })
    }
}

/// Who `token` is, by the API's own check.
async fn signed_in(daemon: &Daemon, token: &str) -> Result<(Arc<Tenant>, Bearer), NotSignedIn> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| NotSignedIn::SignIn)?;
    headers.insert(header::AUTHORIZATION, value);
    crate::auth::authenticate(daemon, &headers).await.map_err(|rejection| match rejection {
        AuthRejection::Unauthorized { .. } | AuthRejection::InsufficientScope { .. } => NotSignedIn::SignIn,
        other => NotSignedIn::Refused(other),
    })
}

/// The value of cookie `name` in the request's `Cookie` headers, when it is there exactly once
/// (a page on another port of this host can plant a second one; then neither is trusted).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value);
    match (values.next(), values.next()) {
        (Some(value), None) if !value.is_empty() => Some(value),
        _ => None,
    }
}

/// One console page: a header naming who is signed in, then `body`.
fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Guild" }
                link rel="stylesheet" href="/ui/console.css";
            }
            body {
                header {
                    nav aria-label="Console" {
                        a href="/ui/runs" { "Guild" }
                        @if let Some(viewer) = viewer {
                            a href="/ui/runs" { "Runs" }
                            a href="/ui/tools" { "Tools" }
                            a href="/ui/audit" { "Audit" }
                            span class="who" { "tenant " (viewer.tenant.name)
                                @if let Some(subject) = &viewer.bearer.subject { " · " (subject) } }
                            form method="post" action="/ui/logout" {
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

async fn login_form() -> Response {
    html_response(StatusCode::OK, login_page(None))
}

fn login_page(error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error { p role="alert" class="error" { (error) } }
            form method="post" action="/ui/login" {
                label for="token" { "Token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                p class="hint" { "A tenant's token, or an OAuth access token, as the API takes it." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(daemon): State<Arc<Daemon>>, axum::Form(form): axum::Form<LoginForm>) -> Response {
    let token = form.token.trim();
    // No token the API takes holds these; refusing them early keeps the form's error plain.
    let storable = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !storable {
        return html_response(StatusCode::UNAUTHORIZED, login_page(Some("That token is not accepted here.")));
    }
    match signed_in(&daemon, token).await {
        Ok(_) => {
            let Some(session) = open_session(token) else {
                let body = html! { p role="alert" { (CONSOLE_SESSIONS_MAX) " browsers are signed in already; try again later." } };
                return html_response(StatusCode::SERVICE_UNAVAILABLE, page("Busy", None, body));
            };
            let max_age = CONSOLE_SESSION_TTL_S;
            let cookie = format!("{SESSION_COOKIE}={session}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}");
            let mut response = Redirect::to("/ui/runs").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(NotSignedIn::SignIn) => {
            html_response(StatusCode::UNAUTHORIZED, login_page(Some("That token is not accepted here.")))
        }
        Err(refused) => refused.into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        sessions().lock().unwrap_or_else(|p| p.into_inner()).remove(session);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    let cleared = format!("{SESSION_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The runs list's filters and cursor; an empty field is no filter.
#[derive(serde::Deserialize, Default)]
struct RunsQuery {
    /// Only this tool's runs.
    tool: Option<String>,
    /// Only runs in this state: `queued`, `running`, `succeeded`, `failed`, `dead`.
    status: Option<String>,
    /// Only runs that ended this way: `output`, `tool_error`, `limit`, … (the audit log's label).
    outcome: Option<String>,
    /// Only runs of this revision of their tool.
    revision: Option<String>,
    /// Only this tenant's runs (an admin's filter; a tenant sees only its own anyway).
    tenant: Option<String>,
    /// Only runs from the last this many minutes.
    since_min: Option<String>,
    /// The page after this run (the last run of the page before).
    after: Option<String>,
    /// `1`: reload the page every [`CONSOLE_LIVE_REFRESH_S`] seconds.
    live: Option<String>,
}

/// How often a followed runs list reloads itself, seconds (a `Refresh` header: the console runs
/// no script).
pub const CONSOLE_LIVE_REFRESH_S: u64 = 5;

/// The `since_min` choices the runs list offers.
const SINCE_CHOICES: [(&str, &str); 4] =
    [("", "any time"), ("15", "last 15 minutes"), ("60", "last hour"), ("1440", "last day")];

async fn runs_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Query(query): Query<RunsQuery>) -> Response {
    let admin = viewer.tenant.admin && viewer.bearer.may_admin();
    let field = |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let (tool, status, outcome) = (field(&query.tool), field(&query.status), field(&query.outcome));
    let (revision, tenant, since) = (field(&query.revision), field(&query.tenant), field(&query.since_min));
    let revision_number = revision.as_deref().and_then(|r| r.parse::<u32>().ok());
    let since_unix_ms = since
        .as_deref()
        .and_then(|m| m.parse::<u64>().ok())
        .map(|minutes| guild_queue::now_unix_ms().saturating_sub(minutes.saturating_mul(60_000)));
    let wanted = |entry: &RunEntry| {
        if !(admin || viewer.bearer.owns(&viewer.tenant, entry.owner())) {
            return false;
        }
        let state = entry.state.borrow();
        let finished = match &*state {
            RunState::Finished(finished) => Some(finished),
            _ => None,
        };
        tool.as_deref().is_none_or(|tool| entry.tool == tool)
            && status.as_deref().is_none_or(|status| state.word() == status)
            && outcome.as_deref().is_none_or(|outcome| finished.is_some_and(|f| f.label() == outcome))
            && (revision.is_none()
                || (revision_number.is_some() && finished.and_then(|f| f.revision) == revision_number))
            && tenant.as_deref().is_none_or(|tenant| entry.tenant == tenant)
            && since_unix_ms.is_none_or(|since| entry.at_unix_ms >= since)
    };
    // A tenant's list walks its own runs only: another tenant's many runs cannot crowd it out.
    let whose = if admin { None } else { Some(viewer.tenant.name.as_str()) };
    let found =
        daemon.runs().recent((whose, wanted), query.after.as_deref(), CONSOLE_RUNS_PAGE + 1, CONSOLE_RUNS_SCAN_MAX);
    let Some((runs, cut_short)) = found else {
        let body =
            html! { p role="alert" { "That page is no longer listed here. " a href="/ui/runs" { "Start again" } } };
        return html_response(StatusCode::NOT_FOUND, page("Runs", Some(&viewer), body));
    };
    let more = runs.len() > CONSOLE_RUNS_PAGE;
    let runs = &runs[..runs.len().min(CONSOLE_RUNS_PAGE)];
    let next = more.then(|| runs.last().map(|entry| entry.id.clone())).flatten();
    // This list's filters as a query, with `extra` (a cursor, the follow switch) after them.
    let query_with = |extra: &[(&'static str, &str)]| {
        let filters = [
            ("tool", &tool),
            ("status", &status),
            ("outcome", &outcome),
            ("revision", &revision),
            ("tenant", &tenant),
            ("since_min", &since),
        ];
        let mut pairs: Vec<(&str, &str)> =
            filters.iter().filter_map(|(name, value)| Some((*name, value.as_deref()?))).collect();
        pairs.extend_from_slice(extra);
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    let live = query.live.as_deref() == Some("1");
    let body = html! {
        form method="get" action="/ui/runs" class="filters" {
            label for="tool" { "Tool" }
            input id="tool" name="tool" size="12" value=(tool.as_deref().unwrap_or_default());
            label for="revision" { "Revision" }
            input id="revision" name="revision" size="4" inputmode="numeric" value=(revision.as_deref().unwrap_or_default());
            label for="status" { "Status" }
            select id="status" name="status" {
                @for word in ["", "queued", "running", "succeeded", "failed", "dead"] {
                    option value=(word) selected[status.as_deref().unwrap_or_default() == word] {
                        @if word.is_empty() { "any" } @else { (word) }
                    }
                }
            }
            label for="outcome" { "Outcome" }
            input id="outcome" name="outcome" size="10" placeholder="output, limit…" value=(outcome.as_deref().unwrap_or_default());
            @if admin {
                label for="tenant" { "Tenant" }
                input id="tenant" name="tenant" size="10" value=(tenant.as_deref().unwrap_or_default());
            }
            label for="since_min" { "When" }
            select id="since_min" name="since_min" {
                @for (value, words) in SINCE_CHOICES {
                    option value=(value) selected[since.as_deref().unwrap_or_default() == value] { (words) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if admin { (node_summary(&daemon).await) }
        p {
            @if live { "Following: this page reloads every " (CONSOLE_LIVE_REFRESH_S) " s. " a href={ "/ui/runs?" (query_with(&[])) } { "Stop following" } }
            @else { a href={ "/ui/runs?" (query_with(&[("live", "1")])) } { "Follow live" } }
        }
        table {
            caption { "Runs, newest first" }
            thead { tr { th scope="col" { "Run" } th scope="col" { "When (UTC)" } th scope="col" { "Tool" } th scope="col" { "Status" }
                th scope="col" { "Outcome" } th scope="col" { "Duration" } th scope="col" { "Fuel" } th scope="col" { "Cost" } th scope="col" { "Bundle" }
                @if admin { th scope="col" { "Tenant" } } } }
            tbody {
                @for entry in runs {
                    @let state = entry.state.borrow().clone();
                    tr class=(state.word()) {
                        td { a href={ "/ui/runs/" (entry.id) } { code { (entry.id) } } }
                        td { (when(entry.at_unix_ms)) }
                        td { (entry.tool) }
                        td { (state.word()) }
                        @match &state {
                            RunState::Finished(finished) => {
                                td { (finished.label()) }
                                td { (duration(finished.wall_time_us)) }
                                td { (finished.fuel_used_units) }
                                td { @if let Some(cost) = &finished.cost { (cost.total.0.normalize()) " " (cost.currency) } }
                                td { @if let Some(bundle) = finished.bundle { a href={ "/ui/runs/" (entry.id) "/bundle" } download aria-label={ "Download bundle " (bundle) } { code { (bundle.short()) } } } }
                            }
                            _ => { td {} td {} td {} td {} td {} }
                        }
                        @if admin { td { (entry.tenant) } }
                    }
                }
            }
        }
        @if runs.is_empty() { p { "No runs match." } }
        @if cut_short {
            p class="hint" { "The list looks through " (CONSOLE_RUNS_SCAN_MAX) " runs a page and stopped there: older runs that match were not reached. Open one by its id, or narrow the filter." }
        }
        @if let Some(next) = next { p { a href={ "/ui/runs?" (query_with(&[("after", &next)])) } rel="next" { "Older runs" } } }
    };
    let mut response = html_response(StatusCode::OK, page("Runs", Some(&viewer), body));
    if live {
        // `Refresh` is what `<meta http-equiv="refresh">` stands for; browsers honour the header.
        response.headers_mut().insert("refresh", HeaderValue::from(CONSOLE_LIVE_REFRESH_S));
    }
    response
}

/// The node's state for an admin: runs here, refusals since it started, and with `--redis` the
/// shared queue, its workers and capability lanes.
async fn node_summary(daemon: &Daemon) -> Markup {
    let queue = daemon.queue();
    let rejections = daemon.metrics().rejections_by_reason();
    let remote = match daemon.remote() {
        Some(remote) => Some(remote.queue.stats().await.map_err(|e| e.to_string())),
        None => None,
    };
    html! {
        section id="node" aria-label="This node" {
            p class="summary" {
                "This node: " (daemon.runs().len()) " runs kept, " (queue.in_flight()) " running, "
                (queue.depth()) " waiting for a slot, " (queue.committing()) " waiting for their audit record."
                @if !rejections.is_empty() {
                    " Refused since it started: "
                    @for (i, (reason, count)) in rejections.iter().enumerate() { @if i > 0 { ", " } (count) " " (reason) }
                    "."
                }
            }
            @match remote {
                None => {}
                Some(Err(why)) => p role="alert" class="error" { "Redis cannot be read now: " (clip(&why)) },
                Some(Ok(stats)) => {
                    p class="hint" { "Jobs the workers run are listed by the node that ran them; open any of them by its run id (" code { "/ui/runs/ID" } ")." }
                    p class="summary" {
                        "Redis queue: " (stats.depth) " waiting, " (stats.pending) " held by workers, " (stats.delayed)
                        " backing off, " (stats.dead) " dead-lettered; " (stats.completed) " completed."
                    }
                    table {
                        caption { "Workers" }
                        thead { tr { th scope="col" { "Worker" } th scope="col" { "Running" } th scope="col" { "Slots" } th scope="col" { "Completed" } th scope="col" { "Lanes" } th scope="col" { "Last seen (UTC)" } } }
                        tbody {
                            @for worker in &stats.workers {
                                tr { td { (worker.name) } td { (worker.running) } td { (worker.slots) } td { (worker.completed) }
                                    td { (worker.lanes.join(", ")) } td { (when(worker.seen_unix_ms)) } }
                            }
                        }
                    }
                    @if !stats.lanes.is_empty() {
                        table {
                            caption { "Capability lanes" }
                            thead { tr { th scope="col" { "Lane" } th scope="col" { "Jobs" } th scope="col" { "Workers" } } }
                            tbody { @for lane in &stats.lanes { tr { td { (lane.lane) } td { (lane.depth) } td { (lane.workers) } } } }
                        }
                    }
                }
            }
        }
    }
}

/// A time for people: `2026-11-30 21:35:27`, UTC; `—` for none known.
fn when(unix_ms: u64) -> String {
    // RFC 3339 ends at 9999-12-31; a time past it (a bad heartbeat in Redis) is no time.
    const LAST_MS: u64 = 253_402_300_799_999;
    if unix_ms == 0 || unix_ms > LAST_MS {
        return "—".to_string();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(at).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

/// A wall time for people; `—` for none known (a run restored from the audit log, which does
/// not keep it: its bundle does).
fn duration(us: u64) -> String {
    match us {
        0 => "—".to_string(),
        1_000_000.. => format!("{:.2} s", us as f64 / 1e6),
        _ => format!("{:.1} ms", us as f64 / 1e3),
    }
}

/// The 404 page: for a run that does not exist and for one the viewer may not see alike.
fn unknown_run(viewer: &Viewer) -> Response {
    let body = html! { p role="alert" { "No such run is known to this node." } p { a href="/ui/runs" { "All runs" } } };
    html_response(StatusCode::NOT_FOUND, page("Unknown run", Some(viewer), body))
}

/// The run `id` if the viewer may see it; else the answer to give instead (the 404 page, the
/// same for a run that does not exist).
async fn authorized(daemon: &Daemon, viewer: &Viewer, id: &str) -> Result<RunEntry, Response> {
    let entry = match lookup(daemon, id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(unknown_run(viewer)),
        Err(why) => {
            let body = html! { p role="alert" { "The shared queue cannot be read now: " (clip(&why)) } };
            let mut response = html_response(StatusCode::SERVICE_UNAVAILABLE, page("Not now", Some(viewer), body));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            return Err(response);
        }
    };
    match daemon.authorize((&viewer.tenant, &viewer.bearer), Some(entry.owner()), "run", id).await {
        Ok(()) => Ok(entry),
        Err(Hidden::NotTheirs) => Err(unknown_run(viewer)),
        Err(Hidden::NotAudited(message)) => {
            let body = html! { p role="alert" { "An admin's read of another tenant's run is audited, and the audit log failed: " (message) } };
            Err(html_response(StatusCode::SERVICE_UNAVAILABLE, page("Not now", Some(viewer), body)))
        }
    }
}

/// Whether the viewer may see bundle `id`, owned by `principal` (from its signed
/// `action.json`): a cached result's bundle is the earlier run's, perhaps another subject's.
/// An admin's read of another tenant's is audited; `Err` when that audit write failed.
async fn may_see_bundle(
    daemon: &Daemon,
    viewer: &Viewer,
    principal: Option<&guild_replay::Principal>,
    id: &guild_replay::Digest,
) -> Result<bool, String> {
    let owner = principal.map(crate::principal::Owner::of_principal);
    match daemon.authorize((&viewer.tenant, &viewer.bearer), owner, "bundle", &id.to_hex()).await {
        Ok(()) => Ok(true),
        Err(Hidden::NotTheirs) => Ok(false),
        Err(Hidden::NotAudited(message)) => Err(message),
    }
}

/// The run `id`: this node's, else (with `--redis`) the shared queue's job of that id, as the
/// API's `GET /v1/runs/{id}` finds it. `Ok(None)` for neither; `Err` when Redis cannot be read.
async fn lookup(daemon: &Daemon, id: &str) -> Result<Option<RunEntry>, String> {
    if let Some(entry) = daemon.runs().get(id) {
        return Ok(Some(entry));
    }
    let Some(remote) = daemon.remote() else { return Ok(None) };
    let status = match remote.queue.status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return Ok(None),
        // Unreadable, and nothing left says whose: absent, to everyone (as the API answers).
        Err(guild_queue::QueueError::Corrupt(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let gone = |status: guild_vocab::RunStatus, code: guild_vocab::FailureCode, why: &str| {
        RunState::Finished(Arc::new(crate::runs::Finished::failed(status, guild_vocab::Failure::host(code, why))))
    };
    let state = match (&status.result, &status.unreadable_result, status.state) {
        (Some(result), _, _) => RunState::Finished(Arc::new(crate::remote::finished(result))),
        (None, Some(why), _) => gone(
            guild_vocab::RunStatus::Failed,
            guild_vocab::FailureCode::UnreadableResult,
            &format!("this node cannot read the job's result ({why})"),
        ),
        (None, None, guild_queue::JobState::Dead) => {
            gone(guild_vocab::RunStatus::Dead, guild_vocab::FailureCode::HostFailure, "its result is no longer kept")
        }
        (None, None, guild_queue::JobState::Done) => {
            gone(guild_vocab::RunStatus::Failed, guild_vocab::FailureCode::HostFailure, "its result is no longer kept")
        }
        (None, None, guild_queue::JobState::Running) => RunState::Running,
        (None, None, _) => RunState::Queued,
    };
    let (_, state) = tokio::sync::watch::channel(state);
    let input = status.input_digest.unwrap_or(guild_replay::Digest::from_bytes([0; 32]));
    Ok(Some(RunEntry {
        id: id.to_string(),
        tenant: status.tenant,
        subject: status.subject,
        agent: None,
        request_digest: crate::runs::request_digest(&status.tool, &input),
        tool: status.tool,
        at_unix_ms: 0,
        state,
    }))
}

async fn run_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    match authorized(&daemon, &viewer, &id).await {
        Ok(entry) => show_run(&daemon, &viewer, &entry, None).await,
        Err(answer) => answer,
    }
}

/// Why a run's bundle is not shown to its viewer: it is an earlier run's (a cached result) and
/// that run was another principal's.
const NOT_YOURS: &str =
    "This run's result came from an earlier run of another principal's (a cached result): its bundle is not shown.";

/// What pressing "Replay now" found.
enum Replayed {
    /// The replay ran; its report.
    Report(Box<guild_runtime::ReplayReport>),
    /// It could not run, and why.
    Failed(String),
}

fn replays() -> &'static tokio::sync::Semaphore {
    static REPLAYS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    REPLAYS.get_or_init(|| tokio::sync::Semaphore::new(CONSOLE_REPLAYS_MAX))
}

/// A tenant's place among its replays running (at most [`CONSOLE_REPLAYS_PER_TENANT_MAX`]),
/// given back when dropped.
struct TenantReplay(String);

impl TenantReplay {
    fn running() -> &'static std::sync::Mutex<std::collections::HashMap<String, usize>> {
        static RUNNING: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
            std::sync::OnceLock::new();
        RUNNING.get_or_init(Default::default)
    }

    fn start(tenant: &str) -> Option<Self> {
        let mut running = Self::running().lock().unwrap_or_else(|p| p.into_inner());
        let count = running.entry(tenant.to_string()).or_default();
        if *count >= CONSOLE_REPLAYS_PER_TENANT_MAX {
            return None;
        }
        *count += 1;
        Some(Self(tenant.to_string()))
    }
}

impl Drop for TenantReplay {
    fn drop(&mut self) {
        let mut running = Self::running().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = running.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.0);
            }
        }
    }
}

async fn replay_run(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let entry = match authorized(&daemon, &viewer, &id).await {
        Ok(entry) => entry,
        Err(answer) => return answer,
    };
    let Some(_turn) = TenantReplay::start(&viewer.tenant.name) else {
        let body =
            html! { p role="alert" { "A replay of this tenant's is running already; press again when it is done." } };
        let mut response = html_response(StatusCode::TOO_MANY_REQUESTS, page("Busy", Some(&viewer), body));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        return response;
    };
    let Ok(_permit) = replays().try_acquire() else {
        let body =
            html! { p role="alert" { (CONSOLE_REPLAYS_MAX) " replays are running already; press again in a moment." } };
        let mut response = html_response(StatusCode::TOO_MANY_REQUESTS, page("Busy", Some(&viewer), body));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        return response;
    };
    let bundle = match &*entry.state.borrow() {
        RunState::Finished(finished) => finished.bundle,
        _ => None,
    };
    let replayed = match bundle {
        None => Replayed::Failed("the run has sealed no bundle".into()),
        Some(bundle) => match crate::bundles::open(&daemon, &bundle).await {
            Err(why) => Replayed::Failed(why),
            Ok((opened, store)) => {
                match may_see_bundle(&daemon, &viewer, opened.action.principal.as_ref(), &bundle).await {
                    Ok(true) => match daemon.runtime().replay(&opened, store.as_ref(), &Default::default()).await {
                        Ok(report) => Replayed::Report(Box::new(report)),
                        Err(e) => Replayed::Failed(format!("the bundle cannot be replayed: {e}")),
                    },
                    Ok(false) => Replayed::Failed(NOT_YOURS.into()),
                    Err(why) => Replayed::Failed(format!("the audit log failed: {why}")),
                }
            }
        },
    };
    show_run(&daemon, &viewer, &entry, Some(replayed)).await
}

async fn download_bundle(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let entry = match authorized(&daemon, &viewer, &id).await {
        Ok(entry) => entry,
        Err(answer) => return answer,
    };
    let bundle = match &*entry.state.borrow() {
        RunState::Finished(finished) => finished.bundle,
        _ => None,
    };
    let found = match bundle {
        Some(bundle) => crate::bundles::find(&daemon, &bundle).await,
        None => Ok(None),
    };
    match (bundle, found) {
        (Some(bundle), Ok(Some(copy))) => {
            let owner = match copy.owner().await {
                Ok(owner) => owner,
                Err(why) => {
                    let body = html! { p role="alert" { "The bundle cannot be read now: " (clip(&why)) } };
                    return html_response(StatusCode::INTERNAL_SERVER_ERROR, page("Not now", Some(&viewer), body));
                }
            };
            match may_see_bundle(&daemon, &viewer, owner.as_ref(), &bundle).await {
                Ok(true) => {}
                Ok(false) => {
                    let body = html! { p role="alert" { (NOT_YOURS) } };
                    return html_response(StatusCode::NOT_FOUND, page("No bundle", Some(&viewer), body));
                }
                Err(why) => {
                    let body = html! { p role="alert" { "The audit log failed: " (why) } };
                    return html_response(StatusCode::SERVICE_UNAVAILABLE, page("Not now", Some(&viewer), body));
                }
            }
            let mut response = copy.stream();
            let disposition = format!("attachment; filename=\"{bundle}.tar.zst\"");
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        (_, Err(crate::bundles::FindError::Unavailable(why) | crate::bundles::FindError::Failed(why))) => {
            let body = html! { p role="alert" { "The bundle cannot be read now: " (why) } };
            html_response(StatusCode::SERVICE_UNAVAILABLE, page("Not now", Some(&viewer), body))
        }
        _ => {
            let body = html! { p role="alert" { "This run's bundle is not kept anywhere this node can read." } };
            html_response(StatusCode::NOT_FOUND, page("No bundle", Some(&viewer), body))
        }
    }
}

async fn show_run(daemon: &Daemon, viewer: &Viewer, entry: &RunEntry, replayed: Option<Replayed>) -> Response {
    let state = entry.state.borrow().clone();
    let finished = match &state {
        RunState::Finished(finished) => Some(finished.clone()),
        _ => None,
    };
    let mut opened = match finished.as_ref().and_then(|f| f.bundle) {
        Some(bundle) => Some((bundle, crate::bundles::open(daemon, &bundle).await)),
        None => None,
    };
    if let Some((bundle, Ok((opened_bundle, _)))) = &opened {
        let seen = may_see_bundle(daemon, viewer, opened_bundle.action.principal.as_ref(), bundle).await;
        match seen {
            Ok(true) => {}
            Ok(false) => opened = Some((*bundle, Err(NOT_YOURS.to_string()))),
            Err(why) => opened = Some((*bundle, Err(format!("the audit log failed: {why}")))),
        }
    }
    // A run restored from the audit log knows no wall time; its bundle does.
    let recorded = match &opened {
        Some((_, Ok((bundle, _)))) => bundle.exec["wall_time_us"].as_u64(),
        _ => None,
    };
    let wall_time_us = finished.as_ref().map(|f| f.wall_time_us).filter(|us| *us > 0).or(recorded).unwrap_or(0);
    let diverged = match &replayed {
        Some(Replayed::Report(report)) => report.mismatch.as_ref().and_then(|m| m.seq),
        _ => None,
    };
    let body = html! {
        dl class="facts" {
            dt { "Run" } dd { code { (entry.id) } }
            dt { "Tool" } dd { (entry.tool) @if let Some(revision) = finished.as_ref().and_then(|f| f.revision) { " · revision " (revision) } }
            dt { "Tenant" } dd { (entry.tenant) @if let Some(subject) = &entry.subject { " · subject " (subject) } }
            @if let Some(agent) = &entry.agent { dt { "Agent" } dd { (agent) } }
            dt { "When (UTC)" } dd { (when(entry.at_unix_ms)) }
            dt { "Status" } dd { (state.word()) }
            @if let Some(finished) = &finished {
                dt { "Outcome" } dd { (finished.label()) @if !finished.message().is_empty() { " — " (clip(finished.message())) } }
                dt { "Duration" } dd { (duration(wall_time_us)) }
                dt { "Fuel" } dd { (finished.fuel_used_units) " units" }
                @if let Some(cost) = &finished.cost { dt { "Cost" } dd { (cost.total.0.normalize()) " " (cost.currency) } }
                @if let Some(trace) = &finished.trace_id { dt { "Trace" } dd { code { (trace) } } }
            }
        }
        @if let Some(replayed) = &replayed { (replay_verdict(replayed)) }
        @match &opened {
            None => p { "No bundle: the run has not sealed one (yet)." },
            Some((bundle, Err(why))) if why == NOT_YOURS => {
                h2 { "Bundle" }
                p { code { (bundle) } }
                p id="verdict" { (NOT_YOURS) }
            }
            Some((bundle, Err(why))) => {
                h2 { "Bundle" }
                p { code { (bundle) } }
                p role="alert" class="error" id="verdict" { "Does not verify: " (clip(why)) }
            }
            Some((bundle, Ok((opened, store)))) => {
                h2 { "Bundle" }
                p { code { (bundle) } }
                p class="ok" id="verdict" { "Verified: its signature and every part it names check out." }
                div class="actions" {
                    form method="post" action={ "/ui/runs/" (entry.id) "/replay" } {
                        button type="submit" { "Replay now" }
                    }
                    a href={ "/ui/runs/" (entry.id) "/bundle" } download { "Download the bundle" }
                }
                (bundle_report(opened, store.as_ref(), diverged))
            }
        }
    };
    html_response(StatusCode::OK, page("Run", Some(viewer), body))
}

fn replay_verdict(replayed: &Replayed) -> Markup {
    html! {
        h2 { "Replay" }
        @match replayed {
            Replayed::Failed(why) => p role="status" class="error" id="replay-verdict" { "The replay could not run: " (clip(why)) },
            Replayed::Report(report) => @match &report.mismatch {
                None if report.fuel_replayed_units == report.fuel_recorded_units => {
                    p role="status" class="ok" id="replay-verdict" {
                        "Replay identical: " (report.tape_events) " events answered from the tape, "
                        (report.fuel_replayed_units) " fuel units, the same ending."
                    }
                }
                None => p role="status" class="error" id="replay-verdict" {
                    "Replay diverged: it burnt " (report.fuel_replayed_units) " fuel units, the run " (report.fuel_recorded_units) "."
                },
                Some(mismatch) => div role="status" class="error" id="replay-verdict" {
                    p {
                        "Replay diverged"
                        @if let Some(seq) = mismatch.seq { " at " a href={ "#event-" (seq) } { "event #" (seq) } }
                        " (" (format!("{:?}", mismatch.class)) "): " (clip(&mismatch.what))
                    }
                    dl class="facts" {
                        dt { "Expected" } dd { (clip(&mismatch.expected)) }
                        dt { "Found" } dd { (clip(&mismatch.found)) }
                        @if let Some(fuel) = mismatch.fuel { dt { "Fuel" } dd { (fuel) } }
                    }
                }
            },
        }
        @if let Replayed::Report(report) = replayed {
            @for note in &report.notes { p class="hint" { (clip(note)) } }
        }
    }
}

/// A verified bundle's output and tape: what the console's run page and `guild bundle inspect
/// --html` both show. `diverged` marks the tape event a replay found different.
fn bundle_report(bundle: &guild_replay::Bundle, store: &dyn guild_replay::BlobStore, diverged: Option<u64>) -> Markup {
    html! {
        @if let Ok(input) = store.get(&bundle.action.input.digest) {
            h3 { "Input" }
            pre id="input" { (clip(&readable(&input))) }
        }
        @if let Some(output) = bundle.result.output.as_ref().and_then(|o| store.get(&o.digest).ok()) {
            h3 { "Output" }
            pre id="output" { (clip(&readable(&output))) }
        } @else {
            h3 { "Result" }
            p { (bundle.result.outcome.label()) ": " (clip(&bundle.result.outcome.message())) }
        }
        @for tree in &bundle.result.output_trees {
            h3 { "After the run: " code { (tree.guest_path) } }
            (tree_view(store, &tree.tree))
        }
        h2 { "Timeline" }
        (timeline(bundle.tape.events(), diverged, store))
    }
}

/// Bytes for people: JSON pretty-printed, other text as it is.
fn readable(bytes: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The tree `root` as nested lists, directories folded, at most [`CONSOLE_TREE_ENTRIES_MAX`]
/// entries and [`CONSOLE_TREE_DEPTH_MAX`] levels.
fn tree_view(store: &dyn guild_replay::BlobStore, root: &guild_replay::Digest) -> Markup {
    let mut budget = CONSOLE_TREE_ENTRIES_MAX;
    let listed = directory(store, root, &mut budget, 0);
    html! {
        div class="tree" { (listed) }
        @if budget == 0 { p class="hint" { "Only the first " (CONSOLE_TREE_ENTRIES_MAX) " entries are listed." } }
    }
}

fn directory(
    store: &dyn guild_replay::BlobStore,
    digest: &guild_replay::Digest,
    budget: &mut usize,
    depth: usize,
) -> Markup {
    let node = match guild_replay::tree::read_node(store, digest) {
        Ok(node) => node,
        Err(e) => return html! { p class="error" { "This directory cannot be read: " (clip(&e.to_string())) } },
    };
    let mut items = Vec::new();
    for dir in &node.dirs {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let inner = if depth + 1 < CONSOLE_TREE_DEPTH_MAX {
            directory(store, &dir.digest, budget, depth + 1)
        } else {
            html! { p class="hint" { "(deeper levels not listed)" } }
        };
        items.push(html! { li { details { summary { (clip(&dir.name)) "/" } (inner) } } });
    }
    for file in &node.files {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        items.push(
            html! { li { (clip(&file.name)) " · " (file.size_bytes) " bytes · " code { (file.digest.short()) } } },
        );
    }
    for link in &node.symlinks {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        items.push(html! { li { (clip(&link.name)) " → " (clip(&link.target)) " (link, not followed)" } });
    }
    html! { ul { @for item in items { (item) } } }
}

/// A recorded HTTP body: its text when it is small enough to show, else its digest and size.
fn body(store: &dyn guild_replay::BlobStore, digest: &guild_replay::Digest, bytes: u64) -> Markup {
    let shown = (bytes <= CONSOLE_BODY_BYTES_MAX).then(|| store.get(digest).ok()).flatten();
    html! {
        @match shown {
            Some(content) => pre class="body" { (clip(&String::from_utf8_lossy(&content))) },
            None => p { (bytes) " bytes, " code { (digest.short()) } " (not shown: over " (CONSOLE_BODY_BYTES_MAX) " bytes)" },
        }
    }
}

/// `guild bundle inspect --html`: one self-contained page (its stylesheet inline, nothing
/// fetched, no script) showing the verified bundle `bundle` as the console shows a run.
pub fn report_html(bundle: &guild_replay::Bundle, store: &dyn guild_replay::BlobStore) -> String {
    let action = &bundle.action;
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Bundle " (bundle.id.short()) " · Guild" }
                style { (maud::PreEscaped(STYLESHEET)) }
            }
            body {
                main {
                    h1 { "Bundle" }
                    dl class="facts" {
                        dt { "Bundle" } dd { code { (bundle.id) } }
                        dt { "Signer" } dd { code { (bundle.signer) } }
                        dt { "Tool" } dd { (action.tool.name) " " (action.tool.version) }
                        @if let Some(principal) = &action.principal {
                            dt { "For" } dd { "tenant " (principal.tenant) " · subject " (principal.subject) }
                        }
                        dt { "Fuel" } dd { (bundle.result.fuel_used_units) " units" }
                        @if let Some(trace) = bundle.exec["trace_id"].as_str() { dt { "Trace" } dd { code { (trace) } } }
                    }
                    p class="ok" id="verdict" { "Verified when this report was written: its signature and every part it names check out." }
                    (bundle_report(bundle, store, None))
                }
            }
        }
    };
    markup.into_string()
}

/// A bundle's tape as a table, one row an event, by `seq`, with the fuel burnt when it happened;
/// `diverged` marks the event a replay found different.
fn timeline(events: &[guild_replay::Event], diverged: Option<u64>, store: &dyn guild_replay::BlobStore) -> Markup {
    html! {
        table class="timeline" {
            caption { (events.len()) " events"
                @if events.len() > CONSOLE_EVENTS_SHOWN_MAX { " (the first " (CONSOLE_EVENTS_SHOWN_MAX) " shown; `guild bundle inspect` lists all)" } }
            thead { tr { th scope="col" { "#" } th scope="col" { "Fuel" } th scope="col" { "Event" } th scope="col" { "Detail" } } }
            tbody {
                @for event in events.iter().take(CONSOLE_EVENTS_SHOWN_MAX) {
                    tr id={ "event-" (event.seq) } class={ "event " (kind(&event.effect)) @if diverged == Some(event.seq) { " diverged" } } {
                        td { (event.seq) }
                        td { (event.fuel) }
                        td { (kind(&event.effect)) }
                        td { (effect(&event.effect, store)) }
                    }
                }
            }
        }
    }
}

fn kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::RandomSeed { .. } => "random",
        Effect::Mount { .. } => "mount",
        Effect::WallClock { .. } => "wall-clock",
        Effect::MonotonicClock { .. } => "monotonic-clock",
        Effect::Log { .. } => "log",
        Effect::Http { .. } => "http",
        Effect::GpuDispatch { .. } => "gpu",
    }
}

fn effect(effect: &Effect, store: &dyn guild_replay::BlobStore) -> Markup {
    match effect {
        Effect::RandomSeed { seed } => html! { "seed " code { (clip(seed)) } },
        Effect::Mount { guest_path, access, tree, entries, bytes } => html! {
            details {
                summary { code { (guest_path) } " " (access) " · tree " code { (tree.short()) } " · " (entries) " entries, " (bytes) " bytes" }
                (tree_view(store, tree))
            }
        },
        Effect::WallClock { seconds, nanoseconds } => {
            html! { (seconds) "." (format!("{nanoseconds:09}")) " s since the epoch" }
        }
        Effect::MonotonicClock { nanoseconds } => html! { (nanoseconds) " ns" },
        Effect::Log { level, source, message } => {
            html! { span class="level" { (level) } " (" (source) ") " (clip(message)) }
        }
        Effect::Http { request, response, error } => html! {
            details {
                summary {
                    (request.method) " " (clip(&request.url)) " → "
                    @match (response, error) {
                        (Some(response), _) => { (response.status) " (" (response.body_bytes) " bytes)" }
                        (None, Some(error)) => { "error: " (clip(error)) }
                        (None, None) => { "no response" }
                    }
                }
                h4 { "Request headers, as the guest wrote them (secrets as placeholders)" }
                (headers(&request.headers))
                @if !request.host_added.is_empty() {
                    h4 { "Added by the host after recording" }
                    (headers(&request.host_added))
                }
                h4 { "Request body" }
                @match &request.body {
                    Some(digest) => (body(store, digest, request.body_bytes)),
                    None => p { "none" },
                }
                @if let Some(response) = response {
                    h4 { "Response headers" }
                    (headers(&response.headers))
                    h4 { "Response body" }
                    (body(store, &response.body, response.body_bytes))
                }
            }
        },
        Effect::GpuDispatch { kernel, version, inputs, outputs, device, error, .. } => html! {
            (kernel) " v" (version) " · in " (shapes(inputs)) " · out " (shapes(outputs)) " · on " (clip(device))
            @if let Some(error) = error { " · error: " (clip(error)) }
        },
    }
}

fn headers(headers: &[(String, String)]) -> Markup {
    html! {
        @if headers.is_empty() { p { "none" } } @else {
            table class="headers" { tbody { @for (name, value) in headers { tr { th scope="row" { (clip(name)) } td { (clip(value)) } } } } }
        }
    }
}

/// Tensors as `f32[2, 3] 1a2b3c4d…`: type, shape and the digest of their bytes.
fn shapes(tensors: &[guild_replay::TensorRecord]) -> String {
    tensors
        .iter()
        .map(|t| match &t.digest {
            Some(digest) => format!("{}{:?} {}", t.dtype, t.shape, digest.short()),
            None => format!("{}{:?}", t.dtype, t.shape),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` cut to [`CONSOLE_TEXT_CHARS_MAX`] characters, saying so.
fn clip(text: &str) -> String {
    match text.char_indices().nth(CONSOLE_TEXT_CHARS_MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} more bytes)", &text[..end], text.len() - end),
    }
}

/// A block of JSON a page shows whole (a tool's schemas and limits, a rollout), cut past this.
pub const CONSOLE_JSON_CHARS_MAX: usize = 64 * 1024;

async fn tools_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer) -> Response {
    let admin = viewer.tenant.admin && viewer.bearer.may_admin();
    let tools = crate::api::tool_listing(&daemon, &viewer.tenant, &viewer.bearer);
    let pretty = |value: &serde_json::Value| {
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        match text.char_indices().nth(CONSOLE_JSON_CHARS_MAX) {
            None => text,
            Some((end, _)) => format!("{}… ({} more bytes)", &text[..end], text.len() - end),
        }
    };
    let body = html! {
        @if tools.is_empty() { p { "No tool is open to this tenant." } }
        @for tool in &tools {
            @let name = tool["name"].as_str().unwrap_or_default();
            section class="tool" aria-labelledby={ "tool-" (name) } {
                h2 id={ "tool-" (name) } { (name) }
                @if let Some(description) = tool["description"].as_str() { p { (clip(description)) } }
                dl class="facts" {
                    dt { "Revision" } dd { (tool["revision"]) }
                    dt { "Component" } dd { code { (tool["component"].as_str().unwrap_or_default()) } }
                    @if let Some(disabled) = tool["disabled"].as_str() { dt { "Disabled" } dd class="error" { (clip(disabled)) } }
                    @if let Some(ttl) = tool["cache"]["ttl_s"].as_u64() { dt { "Result cache" } dd { (ttl) " s" } }
                }
                @if let Some(named) = daemon.tools().named(name) {
                    h3 { "What the operator granted it" }
                    (grants_view(&named.current().grants, admin))
                }
                details {
                    summary { "What the tool declares: schemas, wanted hosts and secrets, limits" }
                    pre { (pretty(tool)) }
                }
                @if admin {
                    @if let Some(state) = crate::api_tools::rollout_state(&daemon, name) {
                        details {
                            summary { "Revisions, flags and rollout" }
                            pre { (pretty(&state)) }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, page("Tools", Some(&viewer), body))
}

/// A tool's effective grants: directories (the host side only for an admin), the hosts it may
/// reach, and where each secret may be sent (never a secret's source or value).
fn grants_view(grants: &guild_vocab::Grants, admin: bool) -> Markup {
    html! {
        dl class="facts grants" {
            dt { "Directories" }
            dd {
                @if grants.mounts.is_empty() { "none" }
                @for mount in &grants.mounts {
                    div { code { (mount.guest_path) } " " (format!("{:?}", mount.access).to_lowercase())
                        @if admin { " ← " code { (mount.host_path.display()) } } }
                }
            }
            dt { "Network" }
            dd {
                @if grants.egress.is_empty() { "none" }
                @for rule in &grants.egress { div { code { (rule) } } }
            }
            dt { "Secrets" }
            dd {
                @if grants.secret_grants.is_empty() { "none" }
                @for grant in &grants.secret_grants {
                    div { code { (grant.name) } " → " @for (i, rule) in grant.rules.iter().enumerate() { @if i > 0 { ", " } code { (rule) } } }
                }
            }
        }
    }
}

/// The audit view's cursor.
#[derive(serde::Deserialize, Default)]
struct AuditQuery {
    /// Records before this one, counted among those the viewer may see (1 is the oldest): a
    /// tenant's cursor says nothing of other tenants' records.
    before: Option<u64>,
}

/// One page of the audit log as a viewer may see it, and what checking the chain found.
struct AuditPage {
    /// Newest first, each with its place among the records the viewer may see.
    records: Vec<(u64, guild_audit::AuditRecord)>,
    /// The chain's verdict: its head, or what broke it.
    verdict: Result<guild_audit::Head, String>,
}

fn audit_reads() -> &'static tokio::sync::Semaphore {
    static READS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    READS.get_or_init(|| tokio::sync::Semaphore::new(CONSOLE_AUDIT_READS_MAX))
}

async fn audit_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Query(query): Query<AuditQuery>) -> Response {
    let Ok(_reading) = audit_reads().try_acquire() else {
        let body = html! { p role="alert" { "The audit log is being read for another view; try again in a moment." } };
        let mut response = html_response(StatusCode::TOO_MANY_REQUESTS, page("Busy", Some(&viewer), body));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        return response;
    };
    let admin = viewer.tenant.admin && viewer.bearer.may_admin();
    let path = daemon.audit().path().to_path_buf();
    let (tenant, bearer) = (viewer.tenant.clone(), viewer.bearer.clone());
    let before = query.before.unwrap_or(u64::MAX);
    // The whole chain is read and checked, a record at a time; only a page's records are kept.
    let read = tokio::task::spawn_blocking(move || {
        let mut kept = std::collections::VecDeque::with_capacity(CONSOLE_AUDIT_PAGE);
        let mut place = 0u64;
        let verdict = guild_audit::verify(&path, |record| {
            let owner =
                crate::principal::Owner { tenant: &record.entry.tenant, subject: record.entry.subject.as_deref() };
            if admin || bearer.owns(&tenant, owner) {
                place += 1;
                if place < before {
                    if kept.len() == CONSOLE_AUDIT_PAGE {
                        kept.pop_front();
                    }
                    kept.push_back((place, record.clone()));
                }
            }
        });
        AuditPage { records: kept.into_iter().rev().collect(), verdict: verdict.map_err(|e| e.to_string()) }
    })
    .await;
    let Ok(page_read) = read else {
        let body = html! { p role="alert" { "The audit log could not be read." } };
        return html_response(StatusCode::INTERNAL_SERVER_ERROR, page("Audit", Some(&viewer), body));
    };
    let body = html! {
        // A tenant is told whether the chain holds, not how long it is: that would count others' runs.
        @match (&page_read.verdict, admin) {
            (Ok(head), true) => p class="ok" id="audit-verdict" { "The chain verifies: " (head.seq) " records, head " code { (head.hash.short()) } "." },
            (Ok(_), false) => p class="ok" id="audit-verdict" { "The chain verifies, from its first record to its last." },
            (Err(why), true) => p role="alert" class="error" id="audit-verdict" { "The chain does not verify: " (clip(why)) },
            (Err(_), false) => p role="alert" class="error" id="audit-verdict" { "The chain does not verify: ask the operator to check the audit log." },
        }
        @if !admin { p class="hint" { "Only this tenant's records are shown." } }
        table {
            caption { "Audit records, newest first" }
            thead { tr { th scope="col" { "#" } @if admin { th scope="col" { "Seq" } } th scope="col" { "When (UTC)" } th scope="col" { "Run or event" }
                th scope="col" { "Tenant" } th scope="col" { "Tool" } th scope="col" { "Outcome" } th scope="col" { "Fuel" } th scope="col" { "Hash" } } }
            tbody {
                @for (place, record) in &page_read.records {
                    tr {
                        td { (place) }
                        @if admin { td { (record.seq) } }
                        td { (when(record.time_unix_ms)) }
                        td {
                            @match &record.entry.event {
                                // An event names what it is about (a bundle, a tool), not a run.
                                Some(event) => { (event.kind) " by " (event.actor) ": " code { (clip(&record.entry.run)) } }
                                None => a href={ "/ui/runs/" (record.entry.run) } { code { (clip(&record.entry.run)) } },
                            }
                        }
                        td { (record.entry.tenant) }
                        td { (record.entry.tool) }
                        td { (record.entry.outcome) }
                        td { (record.entry.fuel_used_units) }
                        td { code { (record.hash.short()) } }
                    }
                }
            }
        }
        @if page_read.records.is_empty() { p { "No records." } }
        @if let Some((oldest, _)) = page_read.records.last() {
            @if *oldest > 1 { p { a href={ "/ui/audit?before=" (oldest) } rel="next" { "Older records" } } }
        }
    };
    html_response(StatusCode::OK, page("Audit", Some(&viewer), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_holds_at_most_its_share_of_sessions_and_its_oldest_makes_room() {
        let token = "console-test-token-sessions";
        let ids: Vec<String> =
            (0..CONSOLE_SESSIONS_PER_TOKEN_MAX + 3).map(|_| open_session(token).expect("a session")).collect();
        let held = ids.iter().filter(|id| session_token(id).is_some()).count();
        assert_eq!(held, CONSOLE_SESSIONS_PER_TOKEN_MAX);
        assert!(session_token(ids.last().expect("one")).is_some(), "the newest always holds");
        assert_eq!(session_token("not-a-session"), None);
    }

    #[test]
    fn a_cookie_counts_only_when_it_is_sent_once() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(value).expect("header"));
            headers
        };
        assert_eq!(cookie(&headers("a=1; guild_console_session=x"), SESSION_COOKIE), Some("x"));
        assert_eq!(cookie(&headers("guild_console_session=x; guild_console_session=y"), SESSION_COOKIE), None);
        assert_eq!(cookie(&headers("guild_console_session="), SESSION_COOKIE), None);
    }

    #[test]
    fn only_this_origins_forms_are_taken() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_str(value).expect("header"));
            }
            headers
        };
        assert!(from_this_origin(&headers(&[("host", "127.0.0.1:8480")])), "no browser, no cross-site risk");
        assert!(from_this_origin(&headers(&[("host", "127.0.0.1:8480"), ("origin", "http://127.0.0.1:8480")])));
        assert!(!from_this_origin(&headers(&[("host", "127.0.0.1:8480"), ("origin", "http://127.0.0.1:9999")])));
        assert!(!from_this_origin(&headers(&[("host", "127.0.0.1:8480"), ("origin", "null")])));
        assert!(!from_this_origin(&headers(&[("origin", "http://127.0.0.1:8480")])), "no Host: refused");
        assert!(!from_this_origin(&headers(&[("host", "h"), ("sec-fetch-site", "same-site")])));
    }

    #[test]
    fn a_time_past_what_rfc_3339_can_write_is_no_time() {
        assert_eq!(when(0), "—");
        assert_eq!(when(253_402_300_800_000), "—");
        assert_eq!(when(1_764_538_527_000), "2025-11-30 21:35:27");
    }
}
