//! The trained student on its test sets: the generated test split always (the paper's synthetic
//! evaluation) and a real test set when the task has one. Every metric the paper uses — exact
//! match raw and SQuAD-normalised, chrF++, BERTScore F1 — and macro-F1 (the headline of a
//! classification task) with a 95 % bootstrap interval over test examples; predictions per example
//! in parquet; a figure.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::evaluator::bertscore::BertScorer;
use crate::evaluator::bootstrap::{mean_interval, score_with_interval, BootstrapConfig};
use crate::evaluator::Metric;
use crate::executor::ExecutorConfig;
use crate::report::figures::{interval_bars, IntervalBar};
use crate::trainer::{model_input, Student};

/// A test set as the evaluator gets it.
#[derive(Debug, Clone)]
pub struct TestSet {
    /// `generated` or `real`.
    pub name: String,
    /// Where the rows come from (a stage file, a registry id).
    pub source: String,
    pub inputs: Vec<String>,
    pub references: Vec<Vec<String>>,
    /// What was cut (subsampling), said in the report.
    pub note: Option<String>,
}

/// One metric on one test set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricResult {
    pub test_set: String,
    pub metric: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
    pub signature: String,
}

/// The interval of `metric` on `test_set` among `results`, if it was computed.
pub fn find_interval(
    results: &[MetricResult],
    test_set: &str,
    metric: &str,
) -> Option<crate::evaluator::bootstrap::Interval> {
    results
        .iter()
        .find(|r| r.test_set == test_set && r.metric == metric)
        .map(MetricResult::interval)
}

impl MetricResult {
    /// The score with its interval.
    pub fn interval(&self) -> crate::evaluator::bootstrap::Interval {
        crate::evaluator::bootstrap::Interval {
            value: self.value,
            low: self.low,
            high: self.high,
            n: self.n,
        }
    }

    pub fn display(&self) -> String {
        format!(
            "{} {:.2} [{:.2}, {:.2}] (n={})",
            self.metric, self.value, self.low, self.high, self.n
        )
    }
}

/// The BERTScore encoder: offline MiniLM (the registry's default), online xlm-roberta-base as the
/// paper (when the registry can resolve it).
pub fn bertscore_model(offline: bool) -> &'static str {
    if offline {
        crate::evaluator::bertscore::DEFAULT_OFFLINE_MODEL
    } else {
        "xlm-roberta-base"
    }
}

/// What [`evaluate`] measured and wrote.
pub struct Evaluated {
    pub results: Vec<MetricResult>,
    pub files: Vec<PathBuf>,
    /// Each test set's predictions, in the order of the sets.
    pub predictions: Vec<Vec<String>>,
}

/// Predict every test set with `student` and score it; writes `predictions_<set>.parquet` into
/// `out_dir`.
#[allow(clippy::too_many_arguments)] // each argument is one setting of the evaluation
pub fn evaluate(
    student: &Student,
    instruction: &str,
    executor: &ExecutorConfig,
    sets: &[TestSet],
    bertscore: Option<&BertScorer>,
    bertscore_id: &str,
    bootstrap: &BootstrapConfig,
    out_dir: &Path,
) -> Result<Evaluated> {
    let mut results = Vec::new();
    let mut files = Vec::new();
    let mut all_predictions = Vec::new();
    for set in sets {
        anyhow::ensure!(
            !set.inputs.is_empty(),
            "the {} test set ({}) is empty",
            set.name,
            set.source
        );
        let sources: Vec<String> =
            set.inputs.iter().map(|i| model_input(executor.task_id, instruction, i)).collect();
        eprintln!("  predicting {} {} examples", set.inputs.len(), set.name);
        let predictions = student.generate(
            &sources,
            executor.max_source_len,
            &executor.sampling(),
            executor.batch_size,
            executor.prefix_cache,
        )?;
        let (scored, file) = score_predictions(
            &set.name,
            set,
            &predictions,
            bertscore,
            bertscore_id,
            bootstrap,
            out_dir,
        )?;
        results.extend(scored);
        files.push(file);
        all_predictions.push(predictions);
    }
    Ok(Evaluated { results, files, predictions: all_predictions })
}

/// Score `predictions` of `set`'s examples with every metric (each with its interval) and write
/// them, per example, to `out_dir/predictions_<name>.parquet`; `name` becomes the results'
/// `test_set` (`real`, or `real-teacher` for the teacher's own answers on the real set).
pub fn score_predictions(
    name: &str,
    set: &TestSet,
    predictions: &[String],
    bertscore: Option<&BertScorer>,
    bertscore_id: &str,
    bootstrap: &BootstrapConfig,
    out_dir: &Path,
) -> Result<(Vec<MetricResult>, PathBuf)> {
    let mut results = Vec::new();
    let mut columns = vec![
        Column::new("input".into(), set.inputs.clone()),
        Column::new(
            "references".into(),
            set.references.iter().map(|r| r.join(" ||| ")).collect::<Vec<_>>(),
        ),
        Column::new("prediction".into(), predictions.to_vec()),
    ];
    for metric in Metric::ALL {
        let scored = score_with_interval(metric, predictions, &set.references, bootstrap)
            .with_context(|| format!("scoring {} on the {name} test set", metric.name()))?;
        let per_example: Option<Vec<f64>> = match metric {
            // A corpus-level metric (a mean over classes): one example has no value of its own.
            Metric::MacroF1 => None,
            Metric::ChrfPlusPlus => Some(
                predictions
                    .iter()
                    .zip(&set.references)
                    .map(|(p, r)| {
                        crate::evaluator::chrf::sentence_chrf(
                            p,
                            r,
                            &crate::evaluator::chrf::ChrfConfig::chrf_plus_plus(),
                        )
                    })
                    .collect(),
            ),
            _ => Some(
                predictions
                    .iter()
                    .zip(&set.references)
                    .map(|(p, r)| {
                        crate::evaluator::score(metric, &[p], std::slice::from_ref(r))
                            .map(|s| s.value)
                            .unwrap_or(f64::NAN)
                    })
                    .collect(),
            ),
        };
        if let Some(values) = per_example {
            columns.push(Column::new(metric.name().into(), values));
        }
        let iv = scored.interval;
        results.push(MetricResult {
            test_set: name.to_string(),
            metric: metric.name().into(),
            value: iv.value,
            low: iv.low,
            high: iv.high,
            n: iv.n,
            signature: format!("{}|{}", scored.score.signature, bootstrap.signature()),
        });
    }
    if let Some(scorer) = bertscore {
        let scores = scorer.score_multi(predictions, &set.references)?;
        let f1: Vec<f64> = scores.f1.iter().map(|f| f * 100.0).collect();
        let iv = mean_interval(&f1, bootstrap);
        columns.push(Column::new("bertscore_f1".into(), f1.clone()));
        results.push(MetricResult {
            test_set: name.to_string(),
            metric: "bertscore-f1".into(),
            value: iv.value,
            low: iv.low,
            high: iv.high,
            n: iv.n,
            signature: format!(
                "{}|model:{bertscore_id}|{}",
                scores.signature,
                bootstrap.signature()
            ),
        });
    }
    let frame = DataFrame::new_infer_height(columns)?;
    let path = out_dir.join(format!("predictions_{name}.parquet"));
    crate::report::write_parquet_atomic(&frame, &path)?;
    Ok((results, path))
}

/// The teacher's own answers to `inputs` from the prompt the student was made from (the paper's
/// teacher row): greedy, with the student's token budget, in input order.
pub async fn teacher_answers<T: crate::teacher::Teacher + ?Sized>(
    teacher: &T,
    parsed: &crate::prompt_parser::ParsedPrompt,
    inputs: &[String],
    max_new_tokens: usize,
    seed: u64,
) -> Result<Vec<String>> {
    let params = crate::teacher::SamplingParams {
        temperature: 0.0,
        max_tokens: Some(max_new_tokens as u32),
        seed: Some(seed),
        ..Default::default()
    };
    let requests: Vec<crate::teacher::ChatRequest> = inputs
        .iter()
        .map(|i| crate::teacher::ChatRequest::user(teacher_prompt(parsed, i), params.clone()))
        .collect();
    let mut answers = Vec::with_capacity(requests.len());
    for (i, a) in teacher.chat_batch(&requests).await.into_iter().enumerate() {
        let a = a.with_context(|| format!("the teacher's answer to real test example {i}"))?;
        answers.push(teacher_answer(a.choices.first().map(|c| c.content.as_str()).unwrap_or("")));
    }
    Ok(answers)
}

/// The prompt the teacher answers a test input with: the user's instruction and demonstrations
/// as the parsed prompt holds them, then the input.
fn teacher_prompt(parsed: &crate::prompt_parser::ParsedPrompt, input: &str) -> String {
    let mut prompt = format!("{}\n\n", parsed.instruction.trim());
    for d in &parsed.demonstrations {
        prompt.push_str(&format!("Input: {}\nOutput: {}\n\n", d.input.trim(), d.output.trim()));
    }
    prompt.push_str(&format!("Input: {}\nOutput:", input.trim()));
    prompt
}

/// The teacher's answer as a prediction: trimmed, and cut where a model that continues the
/// pattern starts the next example.
fn teacher_answer(text: &str) -> String {
    let text = text.trim();
    let cut = ["\nInput:", "\n\nInput"].iter().filter_map(|m| text.find(m)).min();
    text[..cut.unwrap_or(text.len())].trim().to_string()
}

/// `metrics.png/svg`: every metric on every test set with its interval.
pub fn metrics_figure(dir: &Path, run_name: &str, results: &[MetricResult]) -> Result<Vec<String>> {
    let bars: Vec<IntervalBar> = results
        .iter()
        .map(|r| IntervalBar {
            label: format!("{} · {}", r.test_set, r.metric),
            value: r.value,
            low: r.low,
            high: r.high,
        })
        .collect();
    interval_bars(
        dir,
        "metrics",
        &format!("{run_name}: metrics with 95 % bootstrap intervals"),
        "score",
        &bars,
    )
}

/// `evaluation/report/`: the metrics table (value and interval per test set), what was cut, the
/// figure and the manifest.
pub fn write_report(
    paths: &crate::config::Paths,
    stage_dir: &Path,
    run_name: &str,
    headline_metric: &str,
    results: &[MetricResult],
    notes: &[String],
) -> Result<PathBuf> {
    use crate::report::{Manifest, Report, ReportTable};
    let frame = DataFrame::new_infer_height(vec![
        Column::new(
            "test set".into(),
            results.iter().map(|r| r.test_set.clone()).collect::<Vec<_>>(),
        ),
        Column::new("metric".into(), results.iter().map(|r| r.metric.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), results.iter().map(|r| r.value).collect::<Vec<_>>()),
        Column::new("95% low".into(), results.iter().map(|r| r.low).collect::<Vec<_>>()),
        Column::new("95% high".into(), results.iter().map(|r| r.high).collect::<Vec<_>>()),
        Column::new("n".into(), results.iter().map(|r| r.n as u64).collect::<Vec<_>>()),
        Column::new(
            "signature".into(),
            results.iter().map(|r| r.signature.clone()).collect::<Vec<_>>(),
        ),
    ])?;
    let manifest = Manifest::new(
        "report",
        &paths.root,
        serde_json::json!({ "run": run_name, "headline_metric": headline_metric }),
    );
    let mut notes = notes.to_vec();
    // Which metric judges the run, and why, is the evaluation stage's note; the resamples and
    // the seed are in each score's signature.
    notes.push("Intervals are 95 % percentile bootstrap intervals over test examples (resamples and seed in each signature).".to_string());
    let report = Report {
        name: "report".into(),
        title: format!("{run_name}: evaluation of the trained student"),
        tables: vec![ReportTable::new(
            "metrics",
            "Metrics on the generated and real test sets",
            frame,
        )],
        notes,
        manifest,
    };
    report.write(stage_dir, |dir| metrics_figure(dir, run_name, results))
}
