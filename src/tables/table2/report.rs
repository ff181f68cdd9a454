//! Table 2, last job: the table assembled from the finished arms (scores with intervals, paired
//! tests) and written as a report.

use super::*;

impl Prepared {
    /// Assemble the table from finished arms (unfinished ones are named, with how to make them):
    /// scores with intervals from each arm's predictions, paired tests between arms.
    pub fn collect(self) -> Result<Table2> {
        let records: Vec<Option<ArmRecord>> = self.arms.iter().map(|a| self.finished(a)).collect();
        let missing: Vec<&str> = self
            .arms
            .iter()
            .zip(&records)
            .filter(|(_, r)| r.is_none())
            .map(|(a, _)| a.id.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} of {} Table 2 cells are not done ({}) in {}: run the table without --collect-only, or `--cell ID` for each",
                missing.len(),
                self.arms.len(),
                missing.join(", "),
                self.runs_dir.display()
            );
        }
        let Prepared { scale_name, scale, arms, paper, mut notes, mut manifest, runs_dir, .. } =
            self;
        let mut results = Vec::new();
        let mut curves = Vec::new();
        let mut predictions = Vec::new();
        let mut signatures = BTreeMap::new();
        let bootstrap_cfg = BootstrapConfig::default();
        let mut em_scorers: Vec<(String, CorpusScorer)> = Vec::new();
        let mut comparisons: Vec<(String, BaselineComparison)> = Vec::new();
        for (arm, record) in arms.iter().zip(records) {
            let record = record.expect("checked above");
            let path = runs_dir.join(&arm.id).join(ARM_PREDICTIONS);
            let predicted = crate::report::read_parquet(&path)
                .with_context(|| format!("reading the `{}` arm's predictions", arm.name))?;
            let preds = loaders::string_column(&predicted, loaders::PREDICTION)?;
            let refs = loaders::string_list_column(&predicted, loaders::REFERENCES)?;
            let mut scored = BTreeMap::new();
            for metric in [Metric::ExactMatchSquad, Metric::ExactMatch, Metric::ChrfPlusPlus] {
                let s = score_with_interval(metric, &preds, &refs, &bootstrap_cfg)?;
                signatures.insert(
                    metric.name().to_string(),
                    format!("{}|{}", s.score.signature, bootstrap_cfg.signature()),
                );
                scored.insert(metric.name(), s.interval);
                if metric == Metric::ExactMatchSquad {
                    em_scorers.push((arm.name.to_string(), s.scorer));
                }
            }
            let comparison = arm_baselines(arm, &predicted, &preds, &refs, &bootstrap_cfg)?;
            let take = |m: Metric| scored[m.name()].clone();
            let paper_row = paper.row.iter().find(|r| r.arm == arm.name);
            let summary = &record.summary;
            let last_epoch = summary.epochs.last();
            results.push(ArmResult {
                arm: record.arm.clone(),
                data: record.data.clone(),
                train_examples: record.train_examples,
                em_squad: take(Metric::ExactMatchSquad),
                em_raw: take(Metric::ExactMatch),
                chrf: take(Metric::ChrfPlusPlus),
                test_examples: preds.len(),
                cost_usd: record.cost_usd,
                cost_basis: record.cost_basis.clone(),
                paper_examples: paper_row.map(|r| r.examples),
                paper_em: paper_row.map(|r| r.squad),
                paper_cost_usd: paper_row.and_then(|r| r.cost_usd),
                final_train_loss: last_epoch.map(|e| e.train_loss),
                final_validation_loss: last_epoch.and_then(|e| e.validation_loss),
                optimizer_steps: summary.optimizer_steps,
                train_seconds: summary.seconds,
                examples_per_second: summary.examples_per_second,
                predict_seconds: record.predict_seconds,
                train_peak_rss_mb: record.train_peak_rss_mb,
                predict_peak_rss_mb: record.predict_peak_rss_mb,
                versus_baseline: comparison.test.clone(),
            });
            comparisons.push((arm.name.to_string(), comparison));
            curves.push((arm.name.to_string(), summary.steps.clone()));
            predictions.push((arm.name.to_string(), predicted));
        }
        manifest.metric_signatures = signatures;
        let scorer_of = |name: &str| em_scorers.iter().find(|(a, _)| a == name).map(|(_, s)| s);
        let mut paired = Vec::new();
        for (arm, against) in PAIRED_TESTS {
            let (Some(a), Some(b)) = (scorer_of(arm), scorer_of(against)) else { continue };
            let (delta, p_value) = paired_bootstrap(a, b, &bootstrap_cfg)?;
            paired.push(PairedTest { arm: arm.into(), against: against.into(), delta, p_value });
        }
        notes.push(format!("Intervals: 95 % percentile bootstrap over the {} test questions ({}). Paired tests (Koehn 2004): the same resamples score both arms; p is the share of resamples in which the first arm does not beat the second (one-sided), so a small p supports \"first > second\" and a p near 1 the reverse.", results.first().map(|r: &ArmResult| r.test_examples).unwrap_or(0), bootstrap_cfg.signature()));
        notes.push("EM is reported with the official SQuAD answer normalisation (primary, as the paper's SQuAD numbers) and as raw string equality (the Prompt2Model reference evaluator). chrF++ (sacrebleu's defaults) is added because it gives partial credit: at small scales, where EM is often zero for every arm, it still shows which arm's answers come closer.".into());
        let baselines = distinct_baselines(comparisons.iter().map(|(a, c)| (a.as_str(), c)));
        notes.push(format!("Baselines: what a trivial answer scores on the same test questions, with the same intervals: the question's own text copied as the answer, and each arm's most frequent training answer (one row per distinct answer, naming the arms whose data gave it). `{}` tests each arm against the best of its own baselines on SQuAD-normalised EM (paired bootstrap, one-sided, \"better\" where p < {}): an arm that is not better learned nothing a trivial answer does not give.", TABLE2_BASELINES, crate::evaluator::baselines::SIGNIFICANCE));
        notes.push("Cost: the paper's column counts the teacher's API bill (generation) and crowdworker pay (annotation); ours is computed as the `cost basis` column says.".into());
        notes.push(format!("Each arm is a cell (`table2 --cell ID`, one process; `--list-cells`, `--emit-slurm DIR`): its student, predictions and `arm.json` are in {}/<arm>/.", runs_dir.display()));
        Ok(Table2 {
            scale_name,
            scale,
            arms: results,
            baselines,
            paired,
            curves,
            predictions,
            notes,
            manifest,
        })
    }
}

impl Table2 {
    /// The arms, then the baselines (each distinct one a row, scored on the same questions).
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let a = &self.arms;
        let b = self.baseline_rows();
        // The baseline rows have no training data, paper value or cost.
        let nb = b.len();
        let text = |arm: fn(&ArmResult) -> &Interval, m: Metric| -> Vec<Option<String>> {
            a.iter()
                .map(|r| Some(arm(r).to_string()))
                .chain(b.iter().map(|(_, scores)| scores.get(&m).map(Interval::to_string)))
                .collect()
        };
        let numbers = |f: fn(&ArmResult) -> Option<f64>| -> Vec<Option<f64>> {
            a.iter().map(f).chain(std::iter::repeat_n(None, nb)).collect()
        };
        DataFrame::new_infer_height(vec![
            Column::new(
                "arm".into(),
                a.iter()
                    .map(|r| r.arm.clone())
                    .chain(b.iter().map(|(name, _)| {
                        let from = self.baselines.iter().find(|t| &t.system == name);
                        match from {
                            Some(t) if t.kind != BaselineKind::CopyInput => {
                                format!("baseline: {name}, of {}", t.from.join(", "))
                            }
                            _ => format!("baseline: {name}"),
                        }
                    }))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "train examples".into(),
                a.iter()
                    .map(|r| Some(r.train_examples as u64))
                    .chain(std::iter::repeat_n(None, nb))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "EM (SQuAD norm.) [95 % CI]".into(),
                text(|r| &r.em_squad, Metric::ExactMatchSquad),
            ),
            Column::new("EM (raw) [95 % CI]".into(), text(|r| &r.em_raw, Metric::ExactMatch)),
            Column::new("paper EM".into(), numbers(|r| r.paper_em)),
            Column::new("chrF++ [95 % CI]".into(), text(|r| &r.chrf, Metric::ChrfPlusPlus)),
            Column::new(
                "paper examples".into(),
                a.iter()
                    .map(|r| r.paper_examples.map(|x| x as u64))
                    .chain(std::iter::repeat_n(None, nb))
                    .collect::<Vec<_>>(),
            ),
            Column::new("cost ($)".into(), numbers(|r| r.cost_usd)),
            Column::new("paper cost ($)".into(), numbers(|r| r.paper_cost_usd)),
        ])
    }

    /// Each distinct baseline (by name, in first-seen order) with its score on each metric.
    pub fn baseline_rows(&self) -> Vec<(String, BTreeMap<Metric, Interval>)> {
        let mut rows: Vec<(String, BTreeMap<Metric, Interval>)> = Vec::new();
        for b in &self.baselines {
            let i = match rows.iter().position(|(name, _)| name == &b.system) {
                Some(i) => i,
                None => {
                    rows.push((b.system.clone(), BTreeMap::new()));
                    rows.len() - 1
                }
            };
            rows[i].1.insert(b.metric, b.interval.clone());
        }
        rows
    }

    /// Each arm against the best of its baselines (paired bootstrap, SQuAD-normalised EM).
    pub fn versus_baselines(&self) -> Vec<VersusBaseline> {
        self.arms
            .iter()
            .filter_map(|a| {
                a.versus_baseline.as_ref().map(|t| VersusBaseline {
                    group: None,
                    system: a.arm.clone(),
                    test: t.clone(),
                })
            })
            .collect()
    }

    pub fn paired_frame(&self) -> PolarsResult<DataFrame> {
        let p = &self.paired;
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), p.iter().map(|t| t.arm.clone()).collect::<Vec<_>>()),
            Column::new("against".into(), p.iter().map(|t| t.against.clone()).collect::<Vec<_>>()),
            Column::new("Δ EM (points)".into(), p.iter().map(|t| t.delta).collect::<Vec<_>>()),
            Column::new(
                "p (arm not better)".into(),
                p.iter().map(|t| t.p_value).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn details_frame(&self) -> PolarsResult<DataFrame> {
        let a = &self.arms;
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), a.iter().map(|r| r.arm.clone()).collect::<Vec<_>>()),
            Column::new(
                "training data".into(),
                a.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            ),
            Column::new(
                "test examples".into(),
                a.iter().map(|r| r.test_examples as u64).collect::<Vec<_>>(),
            ),
            Column::new(
                "optimizer steps".into(),
                a.iter().map(|r| r.optimizer_steps).collect::<Vec<_>>(),
            ),
            Column::new(
                "final train loss".into(),
                a.iter().map(|r| r.final_train_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "final validation loss".into(),
                a.iter().map(|r| r.final_validation_loss).collect::<Vec<_>>(),
            ),
            Column::new(
                "train seconds".into(),
                a.iter().map(|r| r.train_seconds).collect::<Vec<_>>(),
            ),
            Column::new(
                "train examples/s".into(),
                a.iter().map(|r| r.examples_per_second).collect::<Vec<_>>(),
            ),
            Column::new(
                "predict seconds".into(),
                a.iter().map(|r| r.predict_seconds).collect::<Vec<_>>(),
            ),
            Column::new(
                "train peak RSS (MB)".into(),
                a.iter().map(|r| r.train_peak_rss_mb).collect::<Vec<_>>(),
            ),
            Column::new(
                "predict peak RSS (MB)".into(),
                a.iter().map(|r| r.predict_peak_rss_mb).collect::<Vec<_>>(),
            ),
            Column::new(
                "cost basis".into(),
                a.iter().map(|r| r.cost_basis.clone()).collect::<Vec<_>>(),
            ),
        ])
    }

    pub fn curves_frame(&self) -> PolarsResult<DataFrame> {
        let rows: Vec<(&String, &StepLog)> = self
            .curves
            .iter()
            .flat_map(|(arm, steps)| steps.iter().map(move |s| (arm, s)))
            .collect();
        DataFrame::new_infer_height(vec![
            Column::new("arm".into(), rows.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>()),
            Column::new("step".into(), rows.iter().map(|(_, s)| s.step).collect::<Vec<_>>()),
            Column::new(
                "epoch".into(),
                rows.iter().map(|(_, s)| s.epoch as u64).collect::<Vec<_>>(),
            ),
            Column::new("loss".into(), rows.iter().map(|(_, s)| s.loss).collect::<Vec<_>>()),
            // Learning rates are ~1e-5: as text in scientific notation, not rounded to 0.0000.
            Column::new(
                "lr".into(),
                rows.iter().map(|(_, s)| format!("{:.3e}", s.lr)).collect::<Vec<_>>(),
            ),
            Column::new(
                "grad norm".into(),
                rows.iter().map(|(_, s)| s.grad_norm).collect::<Vec<_>>(),
            ),
        ])
    }

    /// Rounded rows for snapshot tests: (arm, train examples, EM squad, EM raw, chrF++, cost, final
    /// train loss, final validation loss).
    #[allow(clippy::type_complexity)]
    pub fn snapshot_rows(
        &self,
    ) -> Vec<(String, usize, f64, f64, f64, Option<f64>, Option<f64>, Option<f64>)> {
        self.arms
            .iter()
            .map(|r| {
                (
                    r.arm.clone(),
                    r.train_examples,
                    crate::tables::round2(r.em_squad.value),
                    crate::tables::round2(r.em_raw.value),
                    crate::tables::round2(r.chrf.value),
                    r.cost_usd.map(crate::tables::round2),
                    r.final_train_loss.map(crate::tables::round2),
                    r.final_validation_loss.map(crate::tables::round2),
                )
            })
            .collect()
    }

    /// Rounded baseline rows and verdicts for snapshot tests: each baseline with its EM (SQuAD
    /// norm.), EM (raw) and chrF++; then each arm with its best baseline, Δ EM and verdict.
    #[allow(clippy::type_complexity)]
    pub fn baseline_snapshot_rows(
        &self,
    ) -> (Vec<(String, Vec<f64>)>, Vec<(String, String, f64, &'static str)>) {
        let metrics = [Metric::ExactMatchSquad, Metric::ExactMatch, Metric::ChrfPlusPlus];
        let rows = self
            .baseline_rows()
            .into_iter()
            .map(|(name, scores)| {
                let values = metrics
                    .iter()
                    .filter_map(|m| scores.get(m).map(|i| crate::tables::round2(i.value)))
                    .collect();
                (name, values)
            })
            .collect();
        let tests = self
            .arms
            .iter()
            .filter_map(|a| {
                a.versus_baseline.as_ref().map(|t| {
                    (a.arm.clone(), t.baseline.clone(), crate::tables::round2(t.delta), t.outcome())
                })
            })
            .collect();
        (rows, tests)
    }

    pub fn report(&self) -> Result<Report> {
        let mut curves = ReportTable::new(
            "table2_learning_curves",
            "Training loss per optimizer step",
            self.curves_frame()?,
        );
        curves.decimals = 4;
        Ok(Report {
            name: "table2".into(),
            title: format!(
                "Table 2 — SQuAD students by training data (scale `{}`)",
                self.scale_name
            ),
            tables: vec![
                ReportTable::new(
                    "table2",
                    "Table 2: exact match on held-out SQuAD questions, paper beside",
                    self.frame()?,
                ),
                ReportTable::new(
                    "table2_paired",
                    "Paired bootstrap tests between arms (SQuAD-normalised EM, same test questions)",
                    self.paired_frame()?,
                ),
                ReportTable::new(
                    TABLE2_BASELINES,
                    "Does each arm beat a trivial answer? The arm against the best of its baselines (paired bootstrap, SQuAD-normalised EM, same test questions)",
                    versus_frame(&self.versus_baselines(), None, "arm")?,
                ),
                ReportTable::new(
                    "table2_details",
                    "Training details per arm",
                    self.details_frame()?,
                ),
                curves,
            ],
            notes: self.notes.clone(),
            manifest: self.manifest.clone(),
        })
    }

    /// Writes the figures (bars with the paper's values, learning curves) and the predictions.
    fn write_extras(&self, dir: &Path) -> Result<Vec<String>> {
        let mut files = figures::paired_bars(
            dir,
            "table2",
            &format!("Table 2: SQuAD EM by training data (scale {})", self.scale_name),
            &[BarPanel {
                title: "SQuAD exact match".into(),
                axis: "EM (%)".into(),
                groups: self
                    .arms
                    .iter()
                    .map(|a| BarGroup {
                        label: a.arm.clone(),
                        paper: a.paper_em,
                        reproduced: Some(a.em_squad.value),
                        reproduced_interval: Some((a.em_squad.low, a.em_squad.high)),
                    })
                    .collect(),
            }],
        )?;
        let series: Vec<figures::Curve> = self
            .curves
            .iter()
            .map(|(arm, steps)| figures::Curve {
                label: arm.clone(),
                points: steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
            })
            .collect();
        files.extend(figures::line_chart(
            dir,
            "table2_learning_curves",
            "Training loss by arm",
            "optimizer step",
            "loss",
            &series,
        )?);
        for (arm, frame) in &self.predictions {
            let name = format!("predictions_{}.parquet", slug(arm));
            crate::report::write_parquet_atomic(frame, &dir.join(&name))?;
            files.push(name);
        }
        Ok(files)
    }
}

/// The name of the table of arms against their baselines.
const TABLE2_BASELINES: &str = "table2_baselines";

/// One arm's predictions beside its baselines: the copied question and the most frequent
/// answer of the arm's own training data, on the same test questions and metrics as the arm
/// (SQuAD-normalised EM first: the paired test's).
fn arm_baselines(
    arm: &ArmPlan,
    predicted: &DataFrame,
    predictions: &[String],
    references: &[Vec<String>],
    cfg: &BootstrapConfig,
) -> Result<BaselineComparison> {
    let inputs = loaders::string_column(predicted, loaders::INPUT)?;
    // The targets are the answers; the templated sources are not needed by any baseline.
    let train: Vec<Example> =
        arm.train.iter().map(|p| Example::new(p.source.clone(), p.target.clone())).collect();
    let trivial = baselines(BaselineKind::for_task(false), &train, None, &inputs);
    let metrics = [Metric::ExactMatchSquad, Metric::ExactMatch, Metric::ChrfPlusPlus];
    compare_to_baselines("held-out SQuAD", predictions, references, &trivial, &metrics, cfg)
        .with_context(|| format!("scoring the `{}` arm's baselines", arm.name))
}

/// Writes `reports/table2/` for a computed table; returns the folder.
pub fn write_report(registry: &Registry, table: &Table2) -> Result<PathBuf> {
    let report = table.report()?;
    report
        .write(&registry.paths.reports, |dir| table.write_extras(dir))
        .context("writing the Table 2 report")
}

/// Runs Table 2 at a scale and writes `reports/table2/`; returns the table and the folder.
pub fn run(
    registry: &Registry,
    models: &ModelRegistry,
    opts: &Options,
) -> Result<(Table2, PathBuf)> {
    let table = compute(registry, models, opts)?;
    let dir = write_report(registry, &table)?;
    Ok((table, dir))
}
