//! Scoring a predictions file: the work behind `p2m-score` and `p2m score`, with the flags both
//! commands share defined once here (the binaries parse them).

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::bootstrap::{score_with_interval, BootstrapConfig, Interval};
use crate::metric::{score, Metric, Score};
use crate::predictions::{self, Format, Scored};

/// The flags of a metric-only scoring run.
#[derive(clap::Args, Debug, Clone)]
pub struct ScoreFileArgs {
    /// The predictions file.
    #[arg(long, short = 'p')]
    pub predictions: PathBuf,
    /// File format: jsonl, csv or parquet (default: from the extension).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Format::ALL.map(|(name, _)| name)))]
    pub format: Option<String>,
    /// Column (field) holding the predictions.
    #[arg(long, default_value = "prediction")]
    pub prediction_col: String,
    /// Column(s) holding the references: each a string or a list of strings. Repeat for several.
    #[arg(long = "reference-col", default_values_t = vec!["references".to_string()])]
    pub reference_cols: Vec<String>,
    /// Metric(s) to compute. Repeat for several.
    #[arg(long = "metric", short = 'm', value_parser = clap::builder::PossibleValuesParser::new(Metric::ALL.map(Metric::name)))]
    pub metrics: Vec<String>,
    /// Bootstrap resamples for each score's 95 % interval (percentile bootstrap over the rows,
    /// seed 0); 0 prints the scores alone.
    #[arg(long, default_value_t = BootstrapConfig::default().resamples)]
    pub resamples: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ScoreFileArgs {
    /// The metrics asked for, in the order given.
    pub fn metrics(&self) -> Vec<Metric> {
        self.metrics.iter().map(|m| Metric::parse(m).expect("clap checked the name")).collect()
    }

    /// Reads the predictions file as the flags describe it.
    pub fn read(&self) -> Result<Scored> {
        let format = match self.format.as_deref() {
            Some(name) => Format::parse(name).expect("clap checked the name"),
            None => Format::from_path(&self.predictions)?,
        };
        predictions::read(&self.predictions, format, &self.prediction_col, &self.reference_cols)
    }

    /// The intervals' settings: the project's defaults with `--resamples`.
    pub fn bootstrap(&self) -> BootstrapConfig {
        BootstrapConfig { resamples: self.resamples, ..BootstrapConfig::default() }
    }

    /// Each metric's score over `data`, with its interval unless `--resamples 0`.
    pub fn score(&self, data: &Scored) -> Result<Vec<ReportedScore>> {
        let bootstrap = self.bootstrap();
        self.metrics()
            .into_iter()
            .map(|metric| {
                Ok(if bootstrap.resamples == 0 {
                    ReportedScore {
                        score: score(metric, &data.predictions, &data.references)?,
                        interval: None,
                        bootstrap: None,
                    }
                } else {
                    let s = score_with_interval(
                        metric,
                        &data.predictions,
                        &data.references,
                        &bootstrap,
                    )?;
                    ReportedScore {
                        score: s.score,
                        interval: Some(s.interval),
                        bootstrap: Some(bootstrap.signature()),
                    }
                })
            })
            .collect()
    }
}

/// A score as the commands print it: value, signature and (unless turned off) its interval.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedScore {
    #[serde(flatten)]
    pub score: Score,
    /// The 95 % percentile-bootstrap interval; absent with `--resamples 0`.
    pub interval: Option<Interval>,
    /// How the interval was drawn.
    pub bootstrap: Option<String>,
}

impl fmt::Display for ReportedScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.score;
        match (&self.interval, &self.bootstrap) {
            (Some(i), Some(b)) => write!(
                f,
                "{} = {:.2}, 95% CI [{:.2}, {:.2}]  (n={}; {}; {b})",
                s.metric.display_name(),
                s.value,
                i.low,
                i.high,
                s.n,
                s.signature
            ),
            _ => write!(f, "{s}"),
        }
    }
}

/// How every command of the project reports a failure: the error, then each cause on a line of its
/// own (`p2m`, the tables and `p2m-score` alike), and the exit status to return.
pub fn exit_with(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// `p2m-score`'s whole run: read, score, print; errors when no metric was named.
pub fn run(args: &ScoreFileArgs) -> Result<()> {
    if args.metrics.is_empty() {
        bail!(
            "name at least one metric with --metric ({})",
            Metric::ALL.map(Metric::name).join(", ")
        );
    }
    let data = args.read()?;
    let scores = args.score(&data)?;
    print(args, &scores, None)
}

/// Prints `scores` as text lines or one JSON object (`extra` adds fields to the JSON, and its
/// `text` lines follow the scores).
pub fn print(
    args: &ScoreFileArgs,
    scores: &[ReportedScore],
    extra: Option<(&str, serde_json::Value, String)>,
) -> Result<()> {
    if args.json {
        let mut out = serde_json::json!({ "file": args.predictions, "scores": scores });
        if let Some((key, value, _)) = &extra {
            out[*key] = value.clone();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in scores {
            println!("{s}");
        }
        if let Some((_, _, text)) = extra {
            println!("{text}");
        }
    }
    Ok(())
}
