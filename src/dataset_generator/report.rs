//! The generation report (`DIR/report/`): what the generator did, the temperature curve and, with
//! the diversity ablation, its table and figure beside the paper's numbers.

use std::path::{Path, PathBuf};

use anyhow::Result;
use polars::prelude::*;

use super::config::{GenerationLog, GeneratorConfig};
use super::diversity::{DiversityArm, DiversityReport};
use crate::data::paper::PaperDiversity;
use crate::report::{figures, Manifest, Report, ReportTable};
use crate::util::fs::sha256_hex;

fn counts_frame(rows: &[(String, f64)]) -> Result<DataFrame> {
    Ok(DataFrame::new_infer_height(vec![
        Column::new("quantity".into(), rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()),
        Column::new("value".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
    ])?)
}

/// `DIR/report/`: what the generation did (from `generation_log.json`), the temperature curve,
/// and the manifest (teacher, settings, the prompt's sha256 through the config).
pub fn write_generation_report(
    out: &Path,
    prompt: &str,
    log: &GenerationLog,
    cfg: &GeneratorConfig,
    diversity: Option<(&DiversityReport, &PaperDiversity)>,
) -> Result<PathBuf> {
    let paths = crate::config::Paths::from_env()?;
    let mut rows: Vec<(String, f64)> = vec![
        ("target examples".into(), log.target as f64),
        ("accepted examples".into(), log.accepted as f64),
        ("rounds".into(), log.rounds as f64),
        ("requests".into(), log.requests as f64),
        ("failed requests".into(), log.failed_requests as f64),
        ("responses replayed from the cache".into(), log.cached_responses as f64),
        ("choices".into(), log.choices as f64),
        ("choices cut at the token limit".into(), log.truncated_choices as f64),
        ("parsed candidates".into(), log.candidates as f64),
        ("duplicate inputs".into(), log.duplicate_inputs as f64),
        ("inputs with conflicting outputs".into(), log.conflicting_inputs as f64),
        ("prompt tokens (billed)".into(), log.prompt_tokens as f64),
        ("completion tokens (billed)".into(), log.completion_tokens as f64),
        ("cost (USD)".into(), log.cost_usd),
    ];
    let t = &log.teacher_stats;
    if t.slots > 0 {
        // An HTTP teacher: where its time went (queue vs the server), and what was not resent.
        rows.extend([
            ("teacher HTTP requests".to_string(), t.http_attempts as f64),
            ("teacher slots (in-flight cap)".into(), t.slots as f64),
            ("teacher seconds queued (slot + rate limit)".into(), t.queue_secs),
            ("teacher seconds in slots (sent → answered)".into(), t.decode_secs),
            ("teacher requests slow (kept waiting, not resent)".into(), t.slow_requests as f64),
            ("teacher response_format fallbacks".into(), t.format_fallbacks as f64),
        ]);
    }
    rows.extend(log.rejected.iter().map(|(k, v)| (format!("rejected: {k}"), *v as f64)));
    rows.extend(log.errors.iter().map(|(k, v)| (format!("request error: {k}"), *v as f64)));
    let mut table = ReportTable::new("generation", "Generation summary", counts_frame(&rows)?);
    table.decimals = 4;
    let curve = DataFrame::new_infer_height(vec![
        Column::new(
            "round".into(),
            log.temperature_curve.iter().map(|p| p.round).collect::<Vec<_>>(),
        ),
        Column::new(
            "accepted".into(),
            log.temperature_curve.iter().map(|p| p.accepted as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "temperature".into(),
            log.temperature_curve.iter().map(|p| p.temperature).collect::<Vec<_>>(),
        ),
        Column::new(
            "requests".into(),
            log.temperature_curve.iter().map(|p| p.requests as u64).collect::<Vec<_>>(),
        ),
    ])?;
    let manifest = Manifest::new(
        "report",
        &paths.root,
        serde_json::json!({
            "backend": log.backend, "model": log.model, "generator": cfg,
            "prompt_sha256": sha256_hex(prompt.as_bytes()), "output_dir": out,
        }),
    );
    let mut tables = vec![
        table,
        ReportTable::new("temperature_curve", "Temperature annealing per round", curve),
    ];
    let mut notes = Vec::new();
    if let Some((d, paper)) = diversity {
        tables.push(diversity_table(d, paper)?);
        notes.push(diversity_note(d, paper));
    }
    let report = Report {
        name: "report".into(),
        title: format!("Dataset generation: {} examples from {} / {}", log.accepted, log.backend, log.model),
        tables,
        notes: vec![format!(
            "Temperatures anneal from {} to {} with the accepted fraction (T = T0 + (Tmax − T0) · accepted / N); high-diversity prompting {}; self-consistency filtering {}.",
            cfg.initial_temperature,
            cfg.max_temperature,
            if cfg.high_diversity { "on" } else { "off" },
            if cfg.filter_duplicated_examples { "on" } else { "off" }
        )]
        .into_iter()
        .chain(notes)
        .collect(),
        manifest,
    };
    let points: Vec<(f64, f64)> =
        log.temperature_curve.iter().map(|p| (p.accepted as f64, p.temperature)).collect();
    report.write(out, |dir| {
        let mut files = Vec::new();
        if !points.is_empty() {
            files.extend(figures::line_chart(
                dir,
                "temperature_curve",
                "Temperature by accepted examples",
                "accepted examples",
                "temperature",
                &[figures::Curve { label: log.model.clone(), points }],
            )?);
        }
        if let Some((d, paper)) = diversity {
            files.extend(diversity_figure(dir, d, paper)?);
        }
        Ok(files)
    })
}

/// The ablation as a table: duplicates with and without high-diversity prompting, the paper's beside.
pub fn diversity_table(report: &DiversityReport, paper: &PaperDiversity) -> Result<ReportTable> {
    let (paper_without, paper_with, paper_n) = (paper.without, paper.with, paper.of);
    let pct = |d: usize, n: usize| d as f64 * 100.0 / n.max(1) as f64;
    let (without, with) = (&report.without_high_diversity, &report.with_high_diversity);
    let frame = DataFrame::new_infer_height(vec![
        Column::new(
            "prompting".into(),
            vec!["without high-diversity".to_string(), "with high-diversity".to_string()],
        ),
        Column::new("examples".into(), vec![without.examples as u64, with.examples as u64]),
        Column::new(
            "duplicate inputs".into(),
            vec![without.duplicate_inputs as u64, with.duplicate_inputs as u64],
        ),
        Column::new(
            "duplicates (%)".into(),
            vec![
                pct(without.duplicate_inputs, without.examples),
                pct(with.duplicate_inputs, with.examples),
            ],
        ),
        Column::new(
            "paper duplicates (%)".into(),
            vec![pct(paper_without, paper_n), pct(paper_with, paper_n)],
        ),
        Column::new("requests".into(), vec![without.requests, with.requests]),
    ])?;
    Ok(ReportTable::new(
        "diversity",
        "Duplicate inputs with and without generated examples in the prompt",
        frame,
    ))
}

pub fn diversity_note(report: &DiversityReport, paper: &PaperDiversity) -> String {
    let (paper_without, paper_with, paper_n) = (paper.without, paper.with, paper.of);
    format!(
        "Diversity ablation over the first {} raw examples: {} duplicate inputs without high-diversity prompting, {} with; the paper (gpt-3.5-turbo) reports {paper_without}/{paper_n} without and {paper_with}/{paper_n} with.",
        report.n, report.without_high_diversity.duplicate_inputs, report.with_high_diversity.duplicate_inputs
    )
}

/// The ablation as paired bars (this teacher vs the paper), `diversity.png/svg`.
pub fn diversity_figure(
    dir: &Path,
    report: &DiversityReport,
    paper: &PaperDiversity,
) -> Result<Vec<String>> {
    let (paper_without, paper_with, paper_n) = (paper.without, paper.with, paper.of);
    let pct = |d: usize, n: usize| d as f64 * 100.0 / n.max(1) as f64;
    let arm = |label: &str, paper: usize, a: &DiversityArm| figures::BarGroup {
        label: label.into(),
        paper: Some(pct(paper, paper_n)),
        reproduced: Some(pct(a.duplicate_inputs, a.examples)),
        // A count over all generated rows, not an estimate from a sample of test examples.
        reproduced_interval: None,
    };
    let panels = [figures::BarPanel {
        title: "duplicate inputs (%)".into(),
        axis: "duplicates (%)".into(),
        groups: vec![
            arm("without", paper_without, &report.without_high_diversity),
            arm("with", paper_with, &report.with_high_diversity),
        ],
    }];
    figures::paired_bars(
        dir,
        "diversity",
        "Duplicates: paper (gpt-3.5-turbo) vs this teacher",
        &panels,
    )
}
