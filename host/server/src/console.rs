//! The web console at `/ui`: HTML rendered here (maud escapes every value it is given), one
//! stylesheet embedded in the binary, no script and nothing fetched from elsewhere, so it works
//! offline and its Content-Security-Policy can forbid scripts outright.
//!
//! Signing in takes the same tokens as the API (a tenant's static token, or an OAuth access
//! token where `[oauth]` is set). The token is kept in a cookie that only `/ui` is sent,
//! `HttpOnly` (no script could read it anyway) and `SameSite=Strict` (another site cannot make
//! the browser send it), and each page authenticates it exactly as the API authenticates a
//! `Bearer` header. A page shows only what that principal may see: its own runs, and for an
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

/// The cookie that carries the signed-in token.
const TOKEN_COOKIE: &str = "guild_console_token";
/// Runs on one page of the runs list.
pub(crate) const CONSOLE_RUNS_PAGE: usize = 50;
/// A sign-in form's body is refused past this many bytes (a token is far shorter).
pub(crate) const CONSOLE_FORM_BYTES_MAX: usize = 16 * 1024;
/// A tape event's text (a log line, a URL, a header) is cut to this many characters on a page.
pub(crate) const CONSOLE_TEXT_CHARS_MAX: usize = 2_000;

/// What every console answer carries: no script, no framing, no caching, no referrer.
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
        .layer(axum::middleware::map_response(secured))
}

/// The headers every console answer carries.
async fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        include_str!("console.css"),
    )
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
        let token = cookie(&parts.headers, TOKEN_COOKIE).ok_or(NotSignedIn::SignIn)?;
        let (tenant, bearer) = signed_in(daemon, token).await?;
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

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
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
    // A cookie value cannot hold every byte a header can; such a token is no token here.
    let storable = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    if !storable {
        return html_response(StatusCode::UNAUTHORIZED, login_page(Some("That token is not accepted here.")));
    }
    match signed_in(&daemon, token).await {
        Ok(_) => {
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict");
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

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    let cleared = format!("{TOKEN_COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The runs list's filters and cursor.
#[derive(serde::Deserialize, Default)]
struct RunsQuery {
    /// Only this tool's runs.
    tool: Option<String>,
    /// Only runs in this state: `queued`, `running`, `succeeded`, `failed`, `dead`.
    status: Option<String>,
    /// The page after this run (the last run of the page before).
    after: Option<String>,
}

async fn runs_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Query(query): Query<RunsQuery>) -> Response {
    let admin = viewer.tenant.admin && viewer.bearer.may_admin();
    let tool = query.tool.as_deref().filter(|t| !t.is_empty());
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    let wanted = |entry: &RunEntry| {
        (admin || viewer.bearer.owns(&viewer.tenant, entry.owner()))
            && tool.is_none_or(|tool| entry.tool == tool)
            && status.is_none_or(|status| entry.state.borrow().word() == status)
    };
    let Some(runs) = daemon.runs().recent(wanted, query.after.as_deref(), CONSOLE_RUNS_PAGE + 1) else {
        let body =
            html! { p role="alert" { "That page is no longer listed here. " a href="/ui/runs" { "Start again" } } };
        return html_response(StatusCode::NOT_FOUND, page("Runs", Some(&viewer), body));
    };
    let more = runs.len() > CONSOLE_RUNS_PAGE;
    let runs = &runs[..runs.len().min(CONSOLE_RUNS_PAGE)];
    let next = more.then(|| runs.last().map(|entry| entry.id.clone())).flatten();
    let query_for = |after: &str| {
        let mut pairs = vec![("after", after)];
        pairs.extend(tool.map(|t| ("tool", t)));
        pairs.extend(status.map(|s| ("status", s)));
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    };
    let body = html! {
        form method="get" action="/ui/runs" class="filters" {
            label for="tool" { "Tool" }
            input id="tool" name="tool" value=(tool.unwrap_or_default());
            label for="status" { "Status" }
            select id="status" name="status" {
                @for word in ["", "queued", "running", "succeeded", "failed", "dead"] {
                    option value=(word) selected[status == Some(word) || (status.is_none() && word.is_empty())] {
                        @if word.is_empty() { "any" } @else { (word) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p class="summary" { (daemon.runs().len()) " runs kept on this node; newest first." }
        table {
            caption { "Runs" }
            thead { tr { th scope="col" { "Run" } th scope="col" { "Tool" } th scope="col" { "Status" }
                th scope="col" { "Outcome" } th scope="col" { "Duration" } th scope="col" { "Fuel" }
                @if admin { th scope="col" { "Tenant" } } } }
            tbody {
                @for entry in runs {
                    @let state = entry.state.borrow().clone();
                    tr {
                        td { a href={ "/ui/runs/" (entry.id) } { code { (entry.id) } } }
                        td { (entry.tool) }
                        td { (state.word()) }
                        @match &state {
                            RunState::Finished(finished) => {
                                td { (finished.label()) }
                                td { (duration(finished.wall_time_us)) }
                                td { (finished.fuel_used_units) }
                            }
                            _ => { td {} td {} td {} }
                        }
                        @if admin { td { (entry.tenant) } }
                    }
                }
            }
        }
        @if runs.is_empty() { p { "No runs match." } }
        @if let Some(next) = next { p { a href={ "/ui/runs?" (query_for(&next)) } rel="next" { "Older runs" } } }
    };
    html_response(StatusCode::OK, page("Runs", Some(&viewer), body))
}

fn duration(us: u64) -> String {
    if us >= 1_000_000 { format!("{:.2} s", us as f64 / 1e6) } else { format!("{:.1} ms", us as f64 / 1e3) }
}

/// The 404 page: for a run that does not exist and for one the viewer may not see alike.
fn unknown_run(viewer: &Viewer) -> Response {
    let body = html! { p role="alert" { "No such run is known to this node." } p { a href="/ui/runs" { "All runs" } } };
    html_response(StatusCode::NOT_FOUND, page("Unknown run", Some(viewer), body))
}

async fn run_page(State(daemon): State<Arc<Daemon>>, viewer: Viewer, Path(id): Path<String>) -> Response {
    let Some(entry) = daemon.runs().get(&id) else { return unknown_run(&viewer) };
    match daemon.authorize((&viewer.tenant, &viewer.bearer), Some(entry.owner()), "run", &id).await {
        Ok(()) => {}
        Err(Hidden::NotTheirs) => return unknown_run(&viewer),
        Err(Hidden::NotAudited(message)) => {
            let body = html! { p role="alert" { "An admin's read of another tenant's run is audited, and the audit log failed: " (message) } };
            return html_response(StatusCode::SERVICE_UNAVAILABLE, page("Not now", Some(&viewer), body));
        }
    }
    let state = entry.state.borrow().clone();
    let finished = match &state {
        RunState::Finished(finished) => Some(finished.clone()),
        _ => None,
    };
    let opened = match finished.as_ref().and_then(|f| f.bundle) {
        Some(bundle) => Some((bundle, crate::bundles::open(&daemon, &bundle).await)),
        None => None,
    };
    let body = html! {
        dl class="facts" {
            dt { "Run" } dd { code { (entry.id) } }
            dt { "Tool" } dd { (entry.tool) @if let Some(revision) = finished.as_ref().and_then(|f| f.revision) { " · revision " (revision) } }
            dt { "Tenant" } dd { (entry.tenant) @if let Some(subject) = &entry.subject { " · subject " (subject) } }
            @if let Some(agent) = &entry.agent { dt { "Agent" } dd { (agent) } }
            dt { "Status" } dd { (state.word()) }
            @if let Some(finished) = &finished {
                dt { "Outcome" } dd { (finished.label()) @if !finished.message().is_empty() { " — " (clip(finished.message())) } }
                dt { "Duration" } dd { (duration(finished.wall_time_us)) }
                dt { "Fuel" } dd { (finished.fuel_used_units) " units" }
                @if let Some(cost) = &finished.cost { dt { "Cost" } dd { (cost.total.0) " " (cost.currency) } }
                @if let Some(trace) = &finished.trace_id { dt { "Trace" } dd { code { (trace) } } }
            }
        }
        @match &opened {
            None => p { "No bundle: the run has not sealed one (yet)." },
            Some((bundle, Err(why))) => {
                h2 { "Bundle" }
                p { code { (bundle) } }
                p role="alert" class="error" id="verdict" { "Does not verify: " (clip(why)) }
            }
            Some((bundle, Ok((opened, store)))) => {
                h2 { "Bundle" }
                p { code { (bundle) } }
                p class="ok" id="verdict" { "Verified: its signature and every part it names check out." }
                @if let Some(output) = opened.result.output.as_ref().and_then(|o| store.get(&o.digest).ok()) {
                    h3 { "Output" }
                    pre { (clip(&String::from_utf8_lossy(&output))) }
                }
                h2 { "Timeline" }
                (timeline(opened.tape.events()))
            }
        }
    };
    html_response(StatusCode::OK, page("Run", Some(&viewer), body))
}

/// A bundle's tape as a table, one row an event, by `seq`, with the fuel burnt when it happened.
fn timeline(events: &[guild_replay::Event]) -> Markup {
    html! {
        table class="timeline" {
            caption { (events.len()) " events" }
            thead { tr { th scope="col" { "#" } th scope="col" { "Fuel" } th scope="col" { "Event" } th scope="col" { "Detail" } } }
            tbody {
                @for event in events {
                    tr class={ "event " (kind(&event.effect)) } {
                        td { (event.seq) }
                        td { (event.fuel) }
                        td { (kind(&event.effect)) }
                        td { (effect(&event.effect)) }
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

fn effect(effect: &Effect) -> Markup {
    match effect {
        Effect::RandomSeed { seed } => html! { "seed " code { (clip(seed)) } },
        Effect::Mount { guest_path, access, tree, entries, bytes } => html! {
            code { (guest_path) } " " (access) " · tree " code { (tree.short()) } " · " (entries) " entries, " (bytes) " bytes"
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
                p { "Request body: " (request.body_bytes) " bytes" @if let Some(body) = &request.body { ", " code { (body.short()) } } }
                @if let Some(response) = response {
                    h4 { "Response headers" }
                    (headers(&response.headers))
                    p { "Response body: " (response.body_bytes) " bytes, " code { (response.body.short()) } }
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

fn shapes(tensors: &[guild_replay::TensorRecord]) -> String {
    tensors.iter().map(|t| format!("{}{:?}", t.dtype, t.shape)).collect::<Vec<_>>().join(", ")
}

/// `text` cut to [`CONSOLE_TEXT_CHARS_MAX`] characters, saying so.
fn clip(text: &str) -> String {
    match text.char_indices().nth(CONSOLE_TEXT_CHARS_MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} more bytes)", &text[..end], text.len() - end),
    }
}
