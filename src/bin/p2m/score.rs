//! `p2m score`: score a predictions file with exact match, chrF++ (each with its signature and
//! bootstrap interval) and BERTScore. The metric part is `p2m-score`'s, which runs without
//! libtorch.

use anyhow::{bail, Result};
use p2m_metrics::scoring::{self, ScoreFileArgs};
use prompt2model::evaluator::bootstrap::mean_interval;
use prompt2model::evaluator::{self, Metric};

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    file: ScoreFileArgs,
    /// Also compute BERTScore precision/recall/F1 (needs the encoder's weights; see `p2m models`).
    #[arg(long)]
    bertscore: bool,
    /// Registry id of the BERTScore encoder (the paper used xlm-roberta-base, online only).
    #[arg(long, default_value = evaluator::bertscore::DEFAULT_OFFLINE_MODEL)]
    bertscore_model: String,
}

pub fn score(args: ScoreArgs) -> Result<()> {
    if args.file.metrics.is_empty() && !args.bertscore {
        bail!(
            "name at least one metric with --metric ({}) or ask for --bertscore",
            Metric::ALL.map(Metric::name).join(", ")
        );
    }
    let data = args.file.read()?;
    let scores = args.file.score(&data)?;
    let bertscore = if args.bertscore {
        let registry = prompt2model::models::registry::ModelRegistry::from_env()?;
        let scorer = evaluator::bertscore::BertScorer::from_registry(
            &registry,
            &args.bertscore_model,
            None,
            false,
            None,
            prompt2model::models::default_device(),
        )?;
        let s = scorer.score_multi(&data.predictions, &data.references)?;
        let (p, r, f) = s.mean();
        let bootstrap = args.file.bootstrap();
        let f1_interval = (bootstrap.resamples > 0).then(|| mean_interval(&s.f1, &bootstrap));
        let text = match &f1_interval {
            Some(i) => format!(
                "BERTScore P/R/F1 = {p:.4} / {r:.4} / {f:.4}, F1 95% CI [{:.4}, {:.4}]  (n={}; {}; {})",
                i.low,
                i.high,
                s.f1.len(),
                s.signature,
                bootstrap.signature()
            ),
            None => format!(
                "BERTScore P/R/F1 = {p:.4} / {r:.4} / {f:.4}  (n={}; {})",
                s.f1.len(),
                s.signature
            ),
        };
        let json = serde_json::json!({
            "metric": "bertscore", "precision": p, "recall": r, "f1": f, "n": s.f1.len(),
            "signature": s.signature, "f1_interval": f1_interval,
            "bootstrap": f1_interval.is_some().then(|| bootstrap.signature()),
        });
        Some(("bertscore", json, text))
    } else {
        None
    };
    scoring::print(&args.file, &scores, bertscore)
}
