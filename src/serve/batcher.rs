//! One thread owns the model; requests that arrive within a few milliseconds of each other are
//! decoded as one batch.
//!
//! Why a thread and not a tokio task: decoding is seconds of CPU-bound libtorch work that must not
//! stall the HTTP runtime, and the model never has to be shared (`Student` is not `Sync`). Why a
//! bounded queue: when the model is the bottleneck, a client is better served by a fast 429 with
//! `Retry-After` than by a request that waits minutes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::metrics::ServeMetrics;
use crate::executor::ExecutorConfig;
use crate::trainer::{model_input, Student};

/// How requests are grouped.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// The most inputs decoded together (1 = no batching).
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub window: Duration,
    /// Requests waiting beyond the one being decoded; one more is refused (429).
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch: 16, window: Duration::from_millis(5), queue_capacity: 64 }
    }
}

/// Why a job got no outputs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the request waited {waited_ms} ms in the queue, past its {limit_ms} ms limit")]
    Expired { waited_ms: u128, limit_ms: u128 },
    #[error("the model failed: {0}")]
    Model(String),
}

/// One request's inputs.
pub struct Job {
    pub inputs: Vec<String>,
    pub max_new_tokens: usize,
    pub deadline: Instant,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<String>, JobError>>,
    enqueued: Instant,
}

impl Job {
    pub fn new(
        inputs: Vec<String>,
        max_new_tokens: usize,
        timeout: Duration,
    ) -> (Job, tokio::sync::oneshot::Receiver<Result<Vec<String>, JobError>>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let now = Instant::now();
        (Job { inputs, max_new_tokens, deadline: now + timeout, reply, enqueued: now }, rx)
    }
}

/// The queue is full.
#[derive(Debug)]
pub struct Busy;

/// The handle the HTTP side holds.
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    metrics: Arc<ServeMetrics>,
}

impl Batcher {
    /// Load the model on its own thread and start decoding; returns once the model is loaded
    /// (or with the loading error).
    pub fn spawn(
        model_dir: PathBuf,
        instruction: String,
        executor: ExecutorConfig,
        config: BatchConfig,
        device: tch::Device,
        metrics: Arc<ServeMetrics>,
    ) -> anyhow::Result<Batcher> {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_capacity.max(1));
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let depth = Arc::new(AtomicUsize::new(0));
        let worker_depth = depth.clone();
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("p2m-executor".into())
            .spawn(move || {
                let student =
                    match crate::executor::load_student(&model_dir, device, &executor, None)
                        .with_context(|| format!("loading the model in {}", model_dir.display()))
                    {
                        Ok(s) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                let _no_grad = tch::no_grad_guard();
                // Requests come one or a few at a time: the instruction is prefilled once here,
                // not again for each of them.
                match crate::executor::keep_instruction_prefix(&student, &instruction, &executor) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("the instruction's {n} tokens are prefilled once"),
                    Err(e) => tracing::warn!(
                        "prefilling the instruction failed ({e:#}); every request prefills it"
                    ),
                }
                while let Some(jobs) = next_batch(&rx, &config) {
                    let answered = |n: usize| {
                        let left = worker_depth.fetch_sub(n, Ordering::SeqCst) - n;
                        worker_metrics.queue_depth.set(left as i64);
                    };
                    run_batch(
                        &student,
                        &instruction,
                        &executor,
                        &config,
                        jobs,
                        &worker_metrics,
                        answered,
                    );
                }
            })
            .context("starting the executor thread")?;
        ready_rx.recv().context("the executor thread stopped while loading the model")??;
        Ok(Batcher { tx, depth, metrics })
    }

    /// Queue a job, or refuse it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.queue_depth.set(self.depth.load(Ordering::SeqCst) as i64);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(Busy)
            }
        }
    }

    /// Requests waiting or being decoded (the gauge `p2m_queue_depth`).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

/// Wait for a job, then for more until the batch is full or the window has passed. `None` when
/// the server has dropped its handle (shutdown).
fn next_batch(rx: &mpsc::Receiver<Job>, config: &BatchConfig) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let mut n = first.inputs.len();
    let mut jobs = vec![first];
    let until = Instant::now() + config.window;
    while n < config.max_batch {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(job) => {
                n += job.inputs.len();
                jobs.push(job);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

fn run_batch(
    student: &Student,
    instruction: &str,
    executor: &ExecutorConfig,
    config: &BatchConfig,
    jobs: Vec<Job>,
    metrics: &ServeMetrics,
    answered: impl Fn(usize),
) {
    let now = Instant::now();
    let (live, expired): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
    for job in expired {
        let limit = job.deadline - job.enqueued;
        let _ = job.reply.send(Err(JobError::Expired {
            waited_ms: now.duration_since(job.enqueued).as_millis(),
            limit_ms: limit.as_millis(),
        }));
        answered(1);
    }
    // One decode per generation length: greedy decoding of a shorter cap is a prefix of a longer
    // one in tokens, but cutting text at a token count is not exact, so lengths are not mixed.
    let mut by_len: Vec<(usize, Vec<Job>)> = Vec::new();
    for job in live {
        match by_len.iter_mut().find(|(len, _)| *len == job.max_new_tokens) {
            Some((_, group)) => group.push(job),
            None => by_len.push((job.max_new_tokens, vec![job])),
        }
    }
    for (max_new_tokens, group) in by_len {
        let sources: Vec<String> = group
            .iter()
            .flat_map(|j| j.inputs.iter().map(|i| model_input(executor.task_id, instruction, i)))
            .collect();
        metrics.batch_size.observe(sources.len() as f64);
        let sampling = ExecutorConfig { max_new_tokens, ..executor.clone() }.sampling();
        let result = student.generate(
            &sources,
            executor.max_source_len,
            &sampling,
            config.max_batch.max(1),
            executor.prefix_cache,
        );
        let n = group.len();
        match result {
            Ok(outputs) => {
                let mut it = outputs.into_iter();
                for job in group {
                    let mine: Vec<String> = it.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for job in group {
                    let _ = job.reply.send(Err(JobError::Model(message.clone())));
                }
            }
        }
        answered(n);
    }
}
