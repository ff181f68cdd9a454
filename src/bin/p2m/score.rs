//! `p2m score`: score a predictions file with exact match, chrF++ and BERTScore, each score with
//! its signature.

use std::path::PathBuf;

use anyhow::{bail, Result};
use prompt2model::data::predictions::{self, Format};
use prompt2model::evaluator::{self, Metric};

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// The predictions file.
    #[arg(long, short = 'p')]
    predictions: PathBuf,
    /// File format: jsonl, csv or parquet (default: from the extension).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Format::ALL.map(|(name, _)| name)))]
    format: Option<String>,
    /// Column (field) holding the predictions.
    #[arg(long, default_value = "prediction")]
    prediction_col: String,
    /// Column(s) holding the references: each a string or a list of strings. Repeat for several.
    #[arg(long = "reference-col", default_values_t = vec!["references".to_string()])]
    reference_cols: Vec<String>,
    /// Metric(s) to compute. Repeat for several.
    #[arg(long = "metric", short = 'm', value_parser = clap::builder::PossibleValuesParser::new(Metric::ALL.map(Metric::name)), required_unless_present = "bertscore")]
    metrics: Vec<String>,
    /// Also compute BERTScore precision/recall/F1 (needs the encoder's weights; see `p2m models`).
    #[arg(long)]
    bertscore: bool,
    /// Registry id of the BERTScore encoder (the paper used xlm-roberta-base, online only).
    #[arg(long, default_value = evaluator::bertscore::DEFAULT_OFFLINE_MODEL)]
    bertscore_model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    let format = match args.format.as_deref() {
        Some(name) => Format::parse(name).expect("clap checked the name"),
        None => Format::from_path(&args.predictions)?,
    };
    let data =
        predictions::read(&args.predictions, format, &args.prediction_col, &args.reference_cols)?;
    let mut scores = Vec::new();
    for name in &args.metrics {
        let Some(metric) = Metric::parse(name) else { bail!("unknown metric `{name}`") };
        scores.push(evaluator::score(metric, &data.predictions, &data.references)?);
    }
    let bertscore = if args.bertscore {
        let registry = prompt2model::models::registry::ModelRegistry::from_env()?;
        let scorer = prompt2model::evaluator::bertscore::BertScorer::from_registry(
            &registry,
            &args.bertscore_model,
            None,
            false,
            None,
            prompt2model::models::default_device(),
        )?;
        let s = scorer.score_multi(&data.predictions, &data.references)?;
        let (p, r, f) = s.mean();
        Some(
            serde_json::json!({ "metric": "bertscore", "precision": p, "recall": r, "f1": f, "n": s.f1.len(), "signature": s.signature }),
        )
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "file": args.predictions, "scores": scores, "bertscore": bertscore })
            )?
        );
    } else {
        for s in scores {
            println!("{s}");
        }
        if let Some(b) = bertscore {
            println!(
                "BERTScore P/R/F1 = {:.4} / {:.4} / {:.4}  (n={}; {})",
                b["precision"].as_f64().unwrap_or(f64::NAN),
                b["recall"].as_f64().unwrap_or(f64::NAN),
                b["f1"].as_f64().unwrap_or(f64::NAN),
                b["n"],
                b["signature"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
