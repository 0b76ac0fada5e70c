//! `guild bundle verify|inspect|export`, `guild replay` and `guild key show`: what an auditor
//! runs. A bundle is named by a `.tar.zst` file or by its id (or a unique prefix) in the store.

use crate::args::{BundleArgs, ExportArgs, Global, ReplayArgs};
use crate::exit::{Exit, Failure};
use crate::run_cmd::{block_on, host_key, open_runtime, open_store};
use guild_replay::archive::{self, ArchiveLimits};
use guild_replay::{BlobStore, Bundle, Effect, PublicKey, StoreError, VerifyError};
use guild_runtime::{DivergenceClass, ReplayError, ReplayOptions, human_bytes, human_ms};
use std::path::Path;

/// A verified bundle and the store holding its parts.
struct Opened {
    bundle: Bundle,
    store: Box<dyn BlobStore>,
}

fn required_key(args: &BundleArgs) -> Result<Option<PublicKey>, Failure> {
    args.key
        .as_deref()
        .map(|k| k.parse().map_err(|e: guild_replay::KeyError| Failure::usage(e.to_string())))
        .transpose()
}

/// The fewest hex digits of a bundle id the store resolves; shorter prefixes match too much.
const BUNDLE_ID_PREFIX_MIN: usize = 6;

/// Checks that `text` can name a bundle in the store (hex, at least [`BUNDLE_ID_PREFIX_MIN`]
/// digits), so a mistyped file name gets a message about files, not about ids.
///
/// # Errors
/// A usage failure naming what was wrong.
fn bundle_id_text(text: &str, files_allowed: bool) -> Result<&str, Failure> {
    let hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(Failure::usage(if files_allowed {
            format!("no bundle file {text} (and it is not a bundle id: ids are hex)")
        } else {
            format!("{text:?} is not a bundle id: ids are hex")
        }));
    }
    if text.len() < BUNDLE_ID_PREFIX_MIN {
        return Err(Failure::usage(format!(
            "{text:?} is too short to name a bundle: give at least {BUNDLE_ID_PREFIX_MIN} hex digits of its id"
        )));
    }
    Ok(text)
}

fn open(global: &Global, args: &BundleArgs) -> Result<Opened, Failure> {
    let key = required_key(args)?;
    let path = Path::new(&args.bundle);
    if path.is_file() {
        let file =
            std::fs::File::open(path).map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        let imported = archive::import(std::io::BufReader::new(file), ArchiveLimits::default())
            .map_err(|e| Failure::new(Exit::InvalidBundle, format!("invalid bundle: {e}")))?;
        let bundle = Bundle::open(&imported.store, &imported.manifest, &imported.signature, key.as_ref())
            .map_err(verify_failure)?;
        return Ok(Opened { bundle, store: Box::new(imported.store) });
    }
    let text = bundle_id_text(&args.bundle, true)?;
    let store = open_store(global)?;
    let id = store.resolve(text).map_err(store_failure)?;
    let (manifest, signature) = store.get_bundle(&id).map_err(store_failure)?;
    let bundle = Bundle::open(&store, &manifest, &signature, key.as_ref()).map_err(verify_failure)?;
    Ok(Opened { bundle, store: Box::new(store) })
}

fn store_failure(error: StoreError) -> Failure {
    match error {
        StoreError::BundleNotFound(_) | StoreError::AmbiguousPrefix(_) => {
            Failure::usage(format!("{error} (give a bundle file, or an id from `guild run`'s summary line)"))
        }
        other => Failure::new(Exit::InvalidBundle, format!("invalid bundle: {other}")),
    }
}

fn verify_failure(error: VerifyError) -> Failure {
    match error {
        VerifyError::Signature(e) => Failure::new(Exit::Signature, format!("bad signature: {e}")),
        other => Failure::new(Exit::InvalidBundle, format!("invalid bundle: {other}")),
    }
}

pub(crate) fn verify(global: &Global, args: BundleArgs) -> Result<Exit, Failure> {
    let Opened { bundle, .. } = open(global, &args)?;
    let blobs = bundle.manifest.blobs.len() + 4;
    let bytes: u64 = bundle.manifest.blobs.iter().map(|b| b.size_bytes).sum();
    crate::out!(
        "valid: bundle {} · {} {} · signed by {} · {blobs} blobs, {} · {} tape events",
        bundle.id,
        bundle.action.tool.name,
        bundle.action.tool.version,
        bundle.signer,
        human_bytes(bytes),
        bundle.tape.events().len()
    );
    Ok(Exit::Success)
}

pub(crate) fn export(global: &Global, args: ExportArgs) -> Result<Exit, Failure> {
    let text = bundle_id_text(&args.bundle, false)?;
    let store = open_store(global)?;
    let id = store.resolve(text).map_err(store_failure)?;
    let (manifest, signature) = store.get_bundle(&id).map_err(store_failure)?;
    Bundle::open(&store, &manifest, &signature, None).map_err(verify_failure)?;
    let file = std::fs::File::create(&args.output)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", args.output.display())))?;
    archive::export(&store, &manifest, &signature, std::io::BufWriter::new(file))
        .map_err(|e| Failure::host(e.to_string()))?;
    crate::out!("wrote bundle {id} to {}", args.output.display());
    Ok(Exit::Success)
}

pub(crate) fn key_show(global: &Global) -> Result<Exit, Failure> {
    crate::out!("{}", host_key(global)?.public());
    Ok(Exit::Success)
}

/// Events shown by `inspect` before it summarises the rest.
const INSPECT_EVENTS_SHOWN: usize = 50;
/// Characters of input or output shown by `inspect`.
const INSPECT_TEXT_CHARS: usize = 400;

fn clip(text: &str) -> String {
    let kept: String = text.chars().take(INSPECT_TEXT_CHARS).collect();
    let mut clipped = printable(&kept);
    if kept.len() < text.len() {
        clipped.push_str(&format!("… ({} bytes in all)", text.len()));
    }
    clipped
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): what a bundle holds (an input,
/// a token's subject) is shown, never obeyed by the auditor's terminal.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

pub(crate) fn inspect(global: &Global, args: crate::args::InspectArgs) -> Result<Exit, Failure> {
    let Opened { bundle, store, .. } = open(global, &args.bundle)?;
    if let (true, Some(path)) = (args.html, &args.output) {
        let page = guild_server::console::report_html(&bundle, store.as_ref());
        std::fs::write(path, page).map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
        crate::out!("wrote {} (bundle {}, {} events)", path.display(), bundle.id, bundle.tape.events().len());
        return Ok(Exit::Success);
    }
    let action = &bundle.action;
    let result = &bundle.result;
    let get_text = |digest| store.get(digest).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    crate::out!("bundle    {}", bundle.id);
    match &bundle.inclusion {
        Some(batch) => crate::out!(
            "signer    {} (ed25519, signature valid: bundle {} of {} signed together)",
            bundle.signer,
            batch.leaf_index + 1,
            batch.tree_size
        ),
        None => crate::out!("signer    {} (ed25519, signature valid: signed alone, before batching)", bundle.signer),
    }
    crate::out!(
        "tool      {} {} · component {} ({})",
        action.tool.name,
        action.tool.version,
        action.component.digest,
        human_bytes(action.component.size_bytes)
    );
    crate::out!("engine    {}", action.engine);
    if let Some(principal) = &action.principal {
        // Who the run was for: a tenant, and the subject within it (an OAuth access token's).
        // Quoted, so that `bob ` is not read as `bob` (and escaped, so that it is only shown).
        crate::out!("for       tenant {:?} · subject {:?}", principal.tenant, principal.subject);
    }
    crate::out!("input     {}", clip(&get_text(&action.input.digest)));
    if action.policy.mounts.is_empty() {
        crate::out!("grants    no directories");
    }
    for mount in &action.policy.mounts {
        crate::out!("grants    {} {}", mount.guest_path, mount.access);
    }
    let limits = &action.limits;
    crate::out!(
        "limits    fuel {} units · timeout {} · memory {} · output {} · log {}",
        limits.fuel_units,
        human_ms(limits.timeout_ms),
        human_bytes(limits.memory_bytes_max),
        human_bytes(limits.output_bytes_max),
        human_bytes(limits.log_bytes_max),
    );
    crate::out!("effects   {} events, tape head {}", bundle.tape.events().len(), bundle.tape.head());
    for event in bundle.tape.events().iter().take(INSPECT_EVENTS_SHOWN) {
        crate::out!("  #{:<5} fuel {:<12} {}", event.seq, event.fuel, printable(&describe_effect(&event.effect)));
    }
    if bundle.tape.events().len() > INSPECT_EVENTS_SHOWN {
        crate::out!("  … {} more", bundle.tape.events().len() - INSPECT_EVENTS_SHOWN);
    }
    match &result.output {
        Some(output) => crate::out!("result    output: {}", clip(&get_text(&output.digest))),
        None => crate::out!("result    {}: {}", result.outcome.label(), printable(&result.outcome.message())),
    }
    for tree in &result.output_trees {
        crate::out!("          {} after the run: tree {}", tree.guest_path, tree.tree);
    }
    crate::out!("fuel      {} units", result.fuel_used_units);
    crate::out!(
        "exec      host {} · wall {} µs · finished at {} (unix ms) · guild {}",
        bundle.exec["hostname"].as_str().unwrap_or("?"),
        bundle.exec["wall_time_us"],
        bundle.exec["finished_at_unix_ms"],
        bundle.exec["guild_version"].as_str().unwrap_or("?"),
    );
    if let Some(trace) = bundle.exec["trace_id"].as_str() {
        // Where the run's spans are, in the operator's tracing backend.
        let span = bundle.exec["span_id"].as_str().unwrap_or("?");
        crate::out!("trace     {} · span {}", printable(trace), printable(span));
    }
    Ok(Exit::Success)
}

fn describe_effect(effect: &Effect) -> String {
    match effect {
        Effect::RandomSeed { seed } => format!("random seed {}…", &seed[..seed.len().min(16)]),
        Effect::Mount { guest_path, access, tree, entries, bytes } => {
            format!("mount {guest_path} {access}: tree {} ({entries} entries, {})", tree.short(), human_bytes(*bytes))
        }
        Effect::WallClock { seconds, nanoseconds } => format!("wall clock {seconds}.{nanoseconds:09}"),
        Effect::MonotonicClock { nanoseconds } => format!("monotonic clock {nanoseconds} ns"),
        Effect::Log { level, source, message } => format!("log {level} ({source}) {}", clip(message)),
        Effect::Http { request, response, error } => {
            let ending = match (response, error) {
                (Some(r), _) => format!("{} ({})", r.status, human_bytes(r.body_bytes)),
                (None, Some(e)) => format!("error: {e}"),
                (None, None) => "no response".to_string(),
            };
            let added = request.host_added.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>();
            let added = if added.is_empty() {
                String::new()
            } else {
                format!(" · host added {}", printable(&added.join(", ")))
            };
            format!("http {} {} → {ending}{added}", request.method, request.url)
        }
        Effect::GpuDispatch { kernel, version, inputs, outputs, device, error, .. } => {
            let shapes = |t: &[guild_replay::TensorRecord]| {
                t.iter().map(|t| format!("{}{:?}", t.dtype, t.shape)).collect::<Vec<_>>().join(", ")
            };
            let ending = match error {
                Some(e) => format!("error: {}", clip(e)),
                None => format!("{} on {}", shapes(outputs), clip(device)),
            };
            format!("gpu {kernel} v{version} ({}) → {ending}", shapes(inputs))
        }
    }
}

/// `guild bundle cost`: the run's quantities, measured from its bundle as the daemon measured
/// them, priced at the config's `[pricing]`, beside the cost its host signed into the bundle.
pub(crate) fn cost(global: &Global, args: crate::args::CostArgs) -> Result<Exit, Failure> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.config.display())))?;
    let (config, _) = guild_server::config::DaemonConfig::load(&text, &args.config, Vec::new())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let pricing = config.pricing.ok_or_else(|| {
        Failure::usage(format!("{} has no [pricing] section to price the run with", args.config.display()))
    })?;
    let Opened { bundle, store } = open(global, &args.bundle)?;
    let quantities = guild_replay::cost::Quantities::of(&bundle);
    let exchanges: Vec<_> = guild_replay::cost::exchanges(bundle.tape.events()).collect();
    let (cost, _) = pricing.price_recorded(&quantities, &exchanges, store.as_ref());
    let recorded = guild_replay::cost::Quantities::recorded_cost(&bundle);
    let matches = recorded.as_ref().map(|r| *r == cost);
    let exit = if args.check && matches != Some(true) { Exit::CostMismatch } else { Exit::Success };
    if args.json {
        let body = serde_json::json!({
            "bundle": bundle.id.to_hex(), "quantities": quantities, "cost": cost,
            "recorded": recorded, "matches_recorded": matches,
        });
        crate::out!("{body}");
        return Ok(exit);
    }
    crate::out!("bundle    {}", bundle.id);
    for line in &cost.lines {
        crate::out!(
            "{:<16}{} {} × {} {} = {} {}",
            line.resource,
            line.quantity.0.normalize(),
            line.unit,
            line.unit_price.0.normalize(),
            cost.currency,
            line.amount.0.normalize(),
            cost.currency
        );
    }
    crate::out!("total     {} {}", cost.total.0.normalize(), cost.currency);
    match (&recorded, matches) {
        (Some(_), Some(true)) => crate::out!("recorded  the same: the bundle's signed cost agrees"),
        (Some(r), _) => crate::out!(
            "recorded  {} {} when sealed (another price table, or another version's measure)",
            r.total.0.normalize(),
            r.currency
        ),
        (None, _) => crate::out!("recorded  none: the run was sealed without a price table"),
    }
    Ok(exit)
}

pub(crate) fn replay(global: &Global, args: ReplayArgs) -> Result<Exit, Failure> {
    let Opened { bundle, store, .. } = open(global, &args.bundle)?;
    let runtime = open_runtime(global, None, &[])?;
    let options = ReplayOptions {
        allow_engine_mismatch: args.allow_engine_mismatch,
        recompute_gpu: args.recompute_gpu,
        backstop_ms: args.backstop.unwrap_or(0),
    };
    block_on(async {
        let report = runtime.replay(&bundle, store.as_ref(), &options).await.map_err(|e| match e {
            ReplayError::EngineMismatch { .. } => Failure::new(Exit::EngineMismatch, e.to_string()),
            ReplayError::Invalid(_) => Failure::new(Exit::InvalidBundle, e.to_string()),
            ReplayError::Host(_) => Failure::host(e.to_string()),
            ReplayError::TooSlow { .. } => Failure::new(Exit::ReplayTooSlow, e.to_string()),
        })?;
        let exit = match report.mismatch.as_ref().map(|m| m.class) {
            None => Exit::Success,
            Some(DivergenceClass::Nondeterminism) => Exit::Nondeterminism,
            Some(DivergenceClass::OutputMismatch) => Exit::OutputMismatch,
            Some(DivergenceClass::TrapMismatch) => Exit::TrapMismatch,
            Some(DivergenceClass::GpuMismatch) => Exit::GpuMismatch,
        };
        if args.json {
            crate::out!("{}", serde_json::json!({ "exit_code": exit as u8, "report": report }));
            return Ok(exit);
        }
        for note in &report.notes {
            crate::out!("note: {note}");
        }
        for check in &report.gpu_checks {
            let how = if check.exact { "bit for bit" } else { "within tolerance" };
            match &check.mismatch {
                None => crate::out!("gpu {}: recomputed on {} and agrees {how}", check.kernel, check.recomputed_on),
                Some(m) => crate::out!("gpu {}: recomputed on {} and differs: {m}", check.kernel, check.recomputed_on),
            }
        }
        match &report.mismatch {
            None => crate::out!(
                "replay identical: bundle {} · fuel {} units (recorded {}) · {} tape events · {:.2} ms",
                report.bundle.short(),
                report.fuel_replayed_units,
                report.fuel_recorded_units,
                report.tape_events,
                report.wall_time.as_secs_f64() * 1000.0
            ),
            Some(m) => {
                let class =
                    serde_json::to_value(m.class).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                let at = m.seq.map(|s| format!(" at seq {s}")).unwrap_or_default();
                let fuel = m.fuel.map(|f| format!(" (fuel {f})")).unwrap_or_default();
                crate::out!("replay diverged: {class}: {}{at}{fuel}", m.what);
                crate::out!("  expected: {}", clip(&m.expected));
                crate::out!("  found:    {}", clip(&m.found));
            }
        }
        Ok(exit)
    })
}
