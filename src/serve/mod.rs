//! The demo (§3.6): a packaged model (`runs/<name>/model/`, written by `p2m run`) as a web page and
//! an HTTP API, so the small model can be deployed where the LLM was called.
//!
//! - `/`: the task's instruction, an input prefilled with a demonstration, the model's output and
//!   its latency; the demonstrations as one-click examples. Plain HTML served from the binary, no
//!   CDN (many servers, and these machines, have no internet).
//! - `POST /v1/predict`, and the OpenAI-compatible `POST /v1/chat/completions`,
//!   `POST /v1/completions`, `GET /v1/models`: an application that called an LLM can point its
//!   base URL here.
//! - `GET /health`, `GET /metrics` (Prometheus text).
//! - `/review` (when serving a run folder): people correct the instruction and the generated
//!   examples ([`crate::review`]); `p2m run` then trains on what they kept.
//!
//! Requests are decoded in batches by one executor thread ([`batcher`]); limits on body size,
//! inputs, tokens and time keep one client from starving the others.

pub mod api;
pub mod batcher;
pub mod load;
pub mod metrics;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::evaluator::baselines::BaselineComparison;
use crate::pipeline::layout::RunLayout;
use crate::pipeline::package::{ModelManifest, MANIFEST_FILE};
use crate::pipeline::stage::read_stage_json;
use crate::review::Review;
use batcher::{BatchConfig, Batcher};
use metrics::ServeMetrics;

/// Everything `p2m serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// A run folder (`runs/<name>`, with `model/`) or a packaged model folder (with `p2m.json`).
    pub target: PathBuf,
    pub host: IpAddr,
    /// 0 = any free port (the chosen one is reported).
    pub port: u16,
    pub batch: BatchConfig,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most inputs in one request.
    pub max_inputs: usize,
    /// Most tokens of one input with its instruction (`None`: the model's `max_source_len`, what
    /// it was trained to read).
    pub max_input_tokens: Option<usize>,
    /// Most new tokens a request may ask for.
    pub max_new_tokens_limit: usize,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// Bearer token required on the API (`--token-env VAR`); never logged.
    pub token: Option<String>,
    pub device: tch::Device,
    /// The decoding engine (`--engine`); `None`: the packaged executor settings' own.
    pub engine: Option<crate::models::chat::DecodingEngine>,
}

impl ServeConfig {
    pub fn new(target: PathBuf) -> ServeConfig {
        ServeConfig {
            target,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            batch: BatchConfig::default(),
            max_body_bytes: 1 << 20,
            max_inputs: 64,
            max_input_tokens: None,
            max_new_tokens_limit: 256,
            request_timeout: Duration::from_secs(120),
            token: None,
            device: tch::Device::Cpu,
            engine: None,
        }
    }
}

/// What is being served: the model folder, and the run folder when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub model_dir: PathBuf,
    pub run_dir: Option<PathBuf>,
}

/// A run folder or a model folder, or a clear error saying what is expected.
pub fn resolve_target(target: &Path) -> Result<Served> {
    if target.join(MANIFEST_FILE).is_file() {
        // A model folder is the deployable artefact: it is served without the review, which
        // belongs to the run that made it.
        return Ok(Served { model_dir: target.to_path_buf(), run_dir: None });
    }
    let model = target.join("model");
    if model.join(MANIFEST_FILE).is_file() {
        return Ok(Served { model_dir: model, run_dir: Some(target.to_path_buf()) });
    }
    if target.join("run.json").is_file() {
        anyhow::bail!(
            "{} is a run folder without a packaged model (no model/{MANIFEST_FILE}): finish the run with `p2m run` (it resumes) first",
            target.display()
        );
    }
    anyhow::bail!(
        "{} is neither a run folder (runs/<name> with model/{MANIFEST_FILE}) nor a packaged model folder (with {MANIFEST_FILE}); make one with `p2m run`",
        target.display()
    )
}

/// What every handler sees.
pub struct AppState {
    pub manifest: ModelManifest,
    pub served: Served,
    pub tokenizer: tokenizers::Tokenizer,
    pub batcher: Batcher,
    pub metrics: Arc<ServeMetrics>,
    pub config: ServeConfig,
    pub max_input_tokens: usize,
    /// Saves are serialised; reads take the lock too, so a page never sees half a save.
    pub review: Option<Mutex<Review>>,
    /// The student beside trivial answers, per test set, as the run's evaluation measured it.
    pub baselines: Vec<BaselineComparison>,
    /// Why no baselines are shown, where none are.
    pub baselines_note: Option<String>,
    pub started: Instant,
}

/// The run's baselines (its evaluation's `baselines.json`), or why none are known: a bare model
/// folder carries no test sets and no training data to learn a trivial answer from.
pub fn served_baselines(served: &Served) -> (Vec<BaselineComparison>, Option<String>) {
    let Some(run) = &served.run_dir else {
        return (Vec::new(), Some(format!(
            "No baselines are known: {} is a model folder served without the run that made it, so what a trivial answer scores was not measured here; serve the run folder (runs/<name>) to see the student beside its baselines.",
            served.model_dir.display()
        )));
    };
    let path = RunLayout::new(run.clone()).baselines();
    match read_stage_json::<Vec<BaselineComparison>>(&path) {
        Ok(all) if !all.is_empty() => (all, None),
        Ok(_) => (Vec::new(), Some(format!("No baselines are known: {} lists none.", path.display()))),
        Err(e) => (Vec::new(), Some(format!(
            "No baselines are known: the run's evaluation wrote none ({e:#}); run `p2m run` on this run again (it resumes) to measure them."
        ))),
    }
}

/// Load the model and build the state (seconds: the weights are read here).
pub fn load(config: ServeConfig) -> Result<Arc<AppState>> {
    let served = resolve_target(&config.target)?;
    let manifest = ModelManifest::read(&served.model_dir)?;
    let tokenizer =
        crate::trainer::student::plain_tokenizer(&served.model_dir.join("tokenizer.json"))?;
    let metrics = Arc::new(ServeMetrics::default());
    let mut executor = manifest.executor.clone();
    if let Some(engine) = config.engine {
        executor.engine = engine;
    }
    let batcher = Batcher::spawn(
        served.model_dir.clone(),
        manifest.instruction.clone(),
        executor,
        config.batch.clone(),
        config.device,
        metrics.clone(),
    )?;
    let review = match &served.run_dir {
        Some(run) => Review::open(run).ok().map(Mutex::new),
        None => None,
    };
    let (baselines, baselines_note) = served_baselines(&served);
    let max_input_tokens = config.max_input_tokens.unwrap_or(manifest.executor.max_source_len);
    Ok(Arc::new(AppState {
        manifest,
        served,
        tokenizer,
        batcher,
        metrics,
        config,
        max_input_tokens,
        review,
        baselines,
        baselines_note,
        started: Instant::now(),
    }))
}

/// Serve until `shutdown` resolves; then finish the requests in flight and return.
/// `on_listen` is told the address (useful with port 0).
pub async fn serve(
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = SocketAddr::new(state.config.host, state.config.port);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding {addr} (is another server on that port? try --port 0)")
    })?;
    on_listen(listener.local_addr()?);
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
