//! `p2m serve`: a run's packaged model as a web page and an OpenAI-compatible API, with the
//! review page for its data.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use prompt2model::serve::{self, ServeConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// A run folder (`runs/<name>`: the page, the API and the review page) or a packaged model
    /// folder (`runs/<name>/model`: the page and the API).
    pub target: PathBuf,
    /// Address to listen on; the default answers this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most inputs decoded together; 1 turns batching off.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Milliseconds the first request of a batch waits for others.
    #[arg(long, default_value_t = 5)]
    pub batch_window_ms: u64,
    /// Requests that may wait; one more gets 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most inputs in one request.
    #[arg(long, default_value_t = 64)]
    pub max_inputs: usize,
    /// Most tokens of an input with its instruction [default: what the model was trained to read].
    #[arg(long)]
    pub max_input_tokens: Option<usize>,
    /// Most new tokens a request may ask for.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens_limit: usize,
    /// Seconds a request may wait for its answer (504 beyond).
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout: f64,
    /// Name of an environment variable holding a bearer token the API then requires.
    #[arg(long)]
    pub token_env: Option<String>,
    /// Run on the CPU even when a GPU is present.
    #[arg(long)]
    pub cpu: bool,
    /// `libtorch` or `llama-cpp` (a decoder student decoded by llama.cpp from an f16 GGUF of its
    /// weights, written once into the cache) [default: the packaged model's, else libtorch].
    #[arg(long)]
    pub engine: Option<prompt2model::models::chat::DecodingEngine>,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServeConfig::new(args.target.clone());
    config.host = args.host;
    config.port = args.port;
    config.batch.max_batch = args.max_batch.max(1);
    config.batch.window = Duration::from_millis(args.batch_window_ms);
    config.batch.queue_capacity = args.queue.max(1);
    config.max_body_bytes = args.max_body_bytes;
    config.max_inputs = args.max_inputs.max(1);
    config.max_input_tokens = args.max_input_tokens;
    config.max_new_tokens_limit = args.max_new_tokens_limit.max(1);
    anyhow::ensure!(args.request_timeout > 0.0, "--request-timeout must be positive (seconds)");
    config.request_timeout = Duration::from_secs_f64(args.request_timeout);
    if let Some(var) = &args.token_env {
        let token = std::env::var(var).with_context(|| {
            format!("--token-env {var}: the environment variable {var} is not set (export it with the token clients will send)")
        })?;
        anyhow::ensure!(!token.trim().is_empty(), "--token-env {var}: the variable is empty");
        config.token = Some(token);
    }
    config.engine = args.engine;
    config.device =
        if args.cpu { tch::Device::Cpu } else { prompt2model::models::default_device() };
    if !config.host.is_loopback() && config.token.is_none() {
        eprintln!(
            "warning: listening on {} without --token-env: anyone who can reach this address can use the model and edit the review",
            config.host
        );
    }
    let rt = crate::shared::runtime()?;
    rt.block_on(async move {
        let state = tokio::task::spawn_blocking(move || serve::load(config)).await??;
        let review = state.review.is_some();
        let name = state.manifest.name.clone();
        serve::serve(state, serve::termination_signal(), move |addr| {
            println!("serving `{name}` on http://{addr}/ (API: /v1/predict, /v1/chat/completions, /v1/completions; /health, /metrics{})", if review { "; review: /review" } else { "" });
        })
        .await?;
        println!("stopped: requests in flight were answered");
        Ok(())
    })
}
