//! Each claim measured from the tables' results, with what stands in the way of a verdict
//! (identical arms, an unrepresentative sample, students at the floor, cells not run), then judged
//! by [`super::verdict::judge`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::diversity::DiversityRecord;
use super::report::ClaimRow;
use super::spec::{ClaimSpec, ClaimTest};
use super::verdict::{
    self, difference_of_proportions, identical_arms, judge, ArmIdentity, Estimate, Obstacle,
};
use crate::data::loaders;
use crate::evaluator::baselines::BaselineTest;
use crate::evaluator::bootstrap::{paired_difference, BootstrapConfig, CorpusScorer};
use crate::evaluator::Metric;
use crate::tables::cells::LiveTables;
use crate::tables::table1_live::{Table1Live, TEACHER_ROW};
use crate::tables::table2::Table2;
use crate::tables::table3_live::Table3Live;

/// The task a claim is about, where it has one.
pub(super) fn claim_task(c: &ClaimSpec) -> Option<&str> {
    match &c.test {
        ClaimTest::Table1 { task, .. } | ClaimTest::Table3Tau { task } => Some(task),
        ClaimTest::Table2 { .. } | ClaimTest::Table2Cost { .. } => Some("squad"),
        ClaimTest::Diversity => None,
    }
}

/// Everything the claims are judged from: each table, or why it is missing.
pub(super) struct Sources {
    pub(super) table1: std::result::Result<Table1Live, String>,
    pub(super) table3: std::result::Result<Table3Live, String>,
    pub(super) table2: std::result::Result<Table2, String>,
    /// Table 2's arm folders by arm name (the trained students are there).
    pub(super) arm_dirs: BTreeMap<String, PathBuf>,
    pub(super) diversity: std::result::Result<DiversityRecord, String>,
    pub(super) scale: String,
    pub(super) teacher: String,
}

/// The measurement of a claim before the verdict.
#[derive(Default)]
struct Measured {
    estimate: Option<Estimate>,
    p_value: Option<f64>,
    test: Option<String>,
    n: Option<usize>,
    obstacles: Vec<Obstacle>,
    /// Said after the verdict's reason (what was used, what is unknown).
    remarks: Vec<String>,
    source: String,
}

impl Measured {
    fn missing(why: &str, source: String) -> Measured {
        Measured {
            obstacles: vec![Obstacle::NotTestable(why.to_string())],
            source,
            ..Default::default()
        }
    }
}

/// Two arms that both score 0 (the metric's floor) learned nothing: their agreement on every
/// example says nothing about the claim.
fn at_floor(a: &str, score_a: Option<f64>, b: &str, score_b: Option<f64>) -> Option<Obstacle> {
    (score_a == Some(0.0) && score_b == Some(0.0)).then(|| {
        Obstacle::Unreliable(format!(
            "`{a}` and `{b}` both score 0 (the metric's floor): students that learned nothing agree on every example"
        ))
    })
}

/// What the students' tests against their trivial baselines (the input copied, the most frequent
/// training answer, the majority class) say about a comparison of them. Where no student beats
/// its baseline, the difference is between students that learned nothing, which says nothing
/// about the claim (inconclusive); where some do not, the verdict stands (it is what the pipeline
/// produced here) and a remark names them.
fn learned_nothing(
    students: &[(&str, Option<&BaselineTest>)],
) -> (Option<Obstacle>, Option<String>) {
    let below: Vec<String> = students
        .iter()
        .filter_map(|(name, t)| t.filter(|t| !t.better).map(|t| format!("`{name}`: {}", t.brief())))
        .collect();
    if below.is_empty() {
        (None, None)
    } else if below.len() == students.len() {
        let o = Obstacle::Unreliable(format!(
            "no student of the comparison beats its trivial baseline ({}): a difference between students that learned nothing says nothing about the claim",
            below.join("; ")
        ));
        (Some(o), None)
    } else {
        (None, Some(format!("not better than its trivial baseline: {}", below.join("; "))))
    }
}

/// sha256 over a folder's `*.safetensors` files (names and contents, sorted by name).
fn weights_sha256(dir: &Path) -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return None;
    }
    let mut all = String::new();
    for f in &files {
        all.push_str(&f.file_name()?.to_string_lossy());
        all.push_str(&crate::util::fs::sha256_file(f).ok()?);
    }
    Some(crate::util::fs::sha256_hex(all.as_bytes()))
}

impl Sources {
    pub(super) fn judge(
        &self,
        c: &ClaimSpec,
        paper: &crate::data::paper::PaperResults,
        live: &LiveTables,
        metric: &str,
    ) -> Result<ClaimRow> {
        let evidence = c.paper_evidence(paper, live)?;
        let m = match &c.test {
            ClaimTest::Table1 { task, first, second, varies } => {
                self.table1_claim(task, first, second, *varies)
            }
            ClaimTest::Table2 { first, second } => self.table2_claim(first, second)?,
            ClaimTest::Table2Cost { annotation, generation } => {
                self.table2_cost(annotation, generation)
            }
            ClaimTest::Table3Tau { task } => self.table3_claim(task),
            ClaimTest::Diversity => self.diversity_claim(),
        };
        let j = judge(c.expect, m.estimate.as_ref(), &m.obstacles);
        let why = std::iter::once(j.why).chain(m.remarks).collect::<Vec<_>>().join("; ");
        Ok(ClaimRow {
            id: c.id.clone(),
            section: c.section.clone(),
            claim: c.claim.clone(),
            paper: evidence.text,
            paper_value: evidence.value,
            quantity: c.quantity(live, |_| metric.to_string()),
            expect: c.expect.describe(),
            threshold: c.expect.reference(),
            ours: m.estimate,
            p_value: m.p_value,
            test: m.test,
            n: m.n,
            scale: self.scale.clone(),
            verdict: j.verdict,
            why,
            source: m.source,
        })
    }

    fn table1_claim(
        &self,
        task: &str,
        first: &str,
        second: &str,
        varies: Option<verdict::Varied>,
    ) -> Measured {
        let source =
            format!("table1/{}/{}: {task}-{first} − {task}-{second}", self.scale, self.teacher);
        let t1 = match &self.table1 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let Some(pair) =
            t1.paired.iter().find(|p| p.task == task && p.first == first && p.second == second)
        else {
            return Measured::missing(
                &format!("live Table 1 has no paired comparison of `{first}` and `{second}` on {task} (its report's notes say why)"),
                source,
            );
        };
        let d = &pair.paired.difference;
        let mut m = Measured {
            estimate: Some(Estimate::interval(d.value, d.low, d.high)),
            p_value: Some(pair.paired.p_value),
            test: Some("paired bootstrap, one-sided (first ≤ second)".into()),
            n: Some(d.n),
            source,
            ..Default::default()
        };
        let versus = |row: &str| {
            let label = &t1.rows.iter().find(|r| r.task == task && r.row == row)?.label;
            t1.versus_baseline
                .iter()
                .find(|v| v.group.as_deref() == Some(task) && &v.system == label)
                .map(|v| (label.clone(), v.test.clone()))
        };
        let mut students = vec![versus(first)];
        if second != TEACHER_ROW {
            students.push(versus(second));
        }
        let students: Vec<(String, BaselineTest)> = students.into_iter().flatten().collect();
        let (obstacle, remark) = learned_nothing(
            &students.iter().map(|(l, t)| (l.as_str(), Some(t))).collect::<Vec<_>>(),
        );
        m.obstacles.extend(obstacle);
        m.remarks.extend(remark);
        if second == TEACHER_ROW {
            match t1.teacher_samples.iter().find(|t| t.task == task) {
                Some(t) => match (&t.whole, t.representative()) {
                    (Some(w), Some(false)) => m.obstacles.push(Obstacle::Unreliable(format!(
                        "the teacher scores {:.2} on the {}-example test sample, outside the 95 % interval of its score on the whole real test set ({w}, n = {}): the sample is not representative",
                        t.sample.value, t.sample.n, w.n
                    ))),
                    (Some(w), _) => m.remarks.push(format!(
                        "the teacher's sample score {:.2} lies inside its whole-test-set interval ({w}, n = {})",
                        t.sample.value, w.n
                    )),
                    (None, _) => m.remarks.push(format!(
                        "whether the {}-example sample is representative is not known ({})",
                        t.sample.n,
                        t.why_no_whole.as_deref().unwrap_or("no whole-test-set score")
                    )),
                },
                None => m.remarks.push("no teacher-sample check".into()),
            }
        } else {
            let identity = |row: &str| {
                t1.rows.iter().find(|r| r.task == task && r.row == row).map(|r| ArmIdentity {
                    label: r.label.clone(),
                    weights_sha256: r.model_sha256.clone(),
                    train_rows_sha256: r.train_rows_sha256.clone(),
                    student: (!r.student.is_empty()).then(|| r.student.clone()),
                })
            };
            let (a, b) =
                (identity(first).unwrap_or_default(), identity(second).unwrap_or_default());
            let varied = varies.unwrap_or(verdict::Varied::Data);
            if let Some(o) = identical_arms(&a, &b, varied) {
                m.obstacles.push(o);
            }
            let score = |row: &str| {
                t1.rows
                    .iter()
                    .find(|r| r.task == task && r.row == row)
                    .and_then(|r| r.real.as_ref())
                    .map(|i| i.value)
            };
            if let Some(o) = at_floor(&a.label, score(first), &b.label, score(second)) {
                m.obstacles.push(o);
            }
        }
        m
    }

    fn table2_claim(&self, first: &str, second: &str) -> Result<Measured> {
        let source = format!("table2/{}: {} − {}", self.scale, first, second);
        let t2 = match &self.table2 {
            Ok(t) => t,
            Err(why) => return Ok(Measured::missing(why, source)),
        };
        let scorer = |arm: &str| -> Result<CorpusScorer> {
            let (_, frame) = t2
                .predictions
                .iter()
                .find(|(a, _)| a == arm)
                .with_context(|| format!("Table 2 has no arm `{arm}` (data/claims.toml)"))?;
            let preds = loaders::string_column(frame, loaders::PREDICTION)?;
            let refs = loaders::string_list_column(frame, loaders::REFERENCES)?;
            Ok(CorpusScorer::new(Metric::ExactMatchSquad, &preds, &refs)?)
        };
        let (a, b) = (scorer(first)?, scorer(second)?);
        let paired = paired_difference(&a, &b, &BootstrapConfig::default())?;
        // Table 2's own paired test of the same pair, where it has one, must say the same.
        if let Some(t) = t2.paired.iter().find(|t| t.arm == first && t.against == second) {
            anyhow::ensure!(
                t.delta == paired.difference.value && t.p_value == paired.p_value,
                "Table 2's paired test of `{first}` against `{second}` (Δ {}, p {}) differs from the claims' (Δ {}, p {})",
                t.delta, t.p_value, paired.difference.value, paired.p_value
            );
        }
        let d = &paired.difference;
        let mut m = Measured {
            estimate: Some(Estimate::interval(d.value, d.low, d.high)),
            p_value: Some(paired.p_value),
            test: Some("paired bootstrap, one-sided (first ≤ second)".into()),
            n: Some(d.n),
            source,
            ..Default::default()
        };
        let score = |arm: &str| t2.arms.iter().find(|a| a.arm == arm).map(|a| a.em_squad.value);
        if let Some(o) = at_floor(first, score(first), second, score(second)) {
            m.obstacles.push(o);
        }
        let versus = |arm: &str| {
            t2.arms.iter().find(|a| a.arm == arm).and_then(|a| a.versus_baseline.as_ref())
        };
        let (obstacle, remark) =
            learned_nothing(&[(first, versus(first)), (second, versus(second))]);
        m.obstacles.extend(obstacle);
        m.remarks.extend(remark);
        let weights = |arm: &str| {
            self.arm_dirs.get(arm).and_then(|d| weights_sha256(&d.join("student/final")))
        };
        match (weights(first), weights(second)) {
            (Some(wa), Some(wb)) if wa == wb => m.obstacles.push(Obstacle::NotTestable(format!(
                "`{first}` and `{second}` trained identical weights (sha256 {}…): their scores are equal by construction",
                &wa[..12]
            ))),
            (Some(_), Some(_)) => {}
            _ => m.obstacles.push(Obstacle::NotTestable(format!(
                "no trained weights to compare for `{first}` or `{second}` (student/final/ of their arm folders)"
            ))),
        }
        Ok(m)
    }

    fn table2_cost(&self, annotation: &str, generation: &str) -> Measured {
        let source = format!("table2/{}: cost of {annotation} ÷ cost of {generation}", self.scale);
        let t2 = match &self.table2 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let arm = |name: &str| t2.arms.iter().find(|a| a.arm == name);
        let (Some(a), Some(g)) = (arm(annotation), arm(generation)) else {
            return Measured::missing(
                &format!("Table 2 has no arm `{annotation}` or `{generation}`"),
                source,
            );
        };
        let (Some(ca), Some(cg)) = (a.cost_usd, g.cost_usd) else {
            return Measured::missing(
                &format!("Table 2 states no cost for `{annotation}` or `{generation}`"),
                source,
            );
        };
        if cg <= 0.0 {
            return Measured::missing(
                &format!("`{generation}` cost nothing here ({}): no ratio", g.cost_basis),
                source,
            );
        }
        let mut m = Measured {
            estimate: Some(Estimate::exact(ca / cg)),
            test: Some("computed (no sampling interval)".into()),
            n: Some(g.train_examples),
            source,
            remarks: vec![format!(
                "${ca:.2} ({}) against ${cg:.4} ({})",
                a.cost_basis, g.cost_basis
            )],
            ..Default::default()
        };
        if g.cost_basis.contains("lower bound") {
            m.obstacles.push(Obstacle::UpperBound(format!(
                "the cost of `{generation}` is a lower bound, so the ratio is an upper bound"
            )));
        }
        m
    }

    fn table3_claim(&self, task: &str) -> Measured {
        let source = format!("table3/{}/{}: every {task} student", self.scale, self.teacher);
        let t3 = match &self.table3 {
            Ok(t) => t,
            Err(why) => return Measured::missing(why, source),
        };
        let Some(r) = t3.results.iter().find(|r| r.task == task) else {
            return Measured::missing(&format!("live Table 3 has no {task} row"), source);
        };
        let Some(tau) = &r.tau else {
            return Measured::missing(
                &format!("fewer than two {task} students: no ranking to compare"),
                source,
            );
        };
        if !tau.tau.is_finite() {
            return Measured::missing(
                &format!("τ is undefined: every {task} student scored the same on one test set, so there is no ranking to compare (live Table 3's notes give the scores)"),
                source,
            );
        }
        let close: Vec<_> = t3.students.iter().filter(|s| s.task == task && !s.sanity).collect();
        let learned =
            close.iter().filter(|s| s.versus_baseline.as_ref().is_some_and(|t| t.better)).count();
        let learned_line = format!(
            "{learned} of {} close students beat their trivial baseline on the real test",
            close.len()
        );
        let mut obstacles = Vec::new();
        if learned < verdict::MIN_STUDENTS_THAT_LEARN {
            obstacles.push(Obstacle::Unreliable(format!(
                "only {learned_line}: τ needs at least {} students that learned the task, or it ranks students that learned nothing",
                verdict::MIN_STUDENTS_THAT_LEARN
            )));
        }
        let (low, high) = r
            .tau_interval
            .as_ref()
            .map(|i| (100.0 * i.low, 100.0 * i.high))
            .unwrap_or((f64::NAN, f64::NAN));
        Measured {
            estimate: Some(Estimate::interval(100.0 * tau.tau, low, high)),
            p_value: Some(tau.p_value),
            test: Some("Kendall's τ-b, two-sided; interval: bootstrap over both test sets".into()),
            n: Some(r.students),
            source,
            remarks: vec![format!(
                "{} students ({learned_line}), {} generated / {} real test examples",
                r.students, r.n_generated, r.n_real
            )],
            obstacles,
        }
    }

    fn diversity_claim(&self) -> Measured {
        let source = format!("diversity/{}", self.scale);
        let r = match &self.diversity {
            Ok(r) => r,
            Err(why) => return Measured::missing(why, source),
        };
        let (with, without) = (&r.report.with_high_diversity, &r.report.without_high_diversity);
        Measured {
            estimate: Some(difference_of_proportions(
                without.duplicate_inputs,
                without.examples,
                with.duplicate_inputs,
                with.examples,
            )),
            test: Some("difference of two proportions, Newcombe's hybrid score interval".into()),
            n: Some(r.report.n),
            source: format!("{source}: {}", r.task),
            remarks: vec![format!(
                "{} of {} duplicate inputs without, {} of {} with high-diversity prompting; teacher {} ({})",
                without.duplicate_inputs,
                without.examples,
                with.duplicate_inputs,
                with.examples,
                r.teacher,
                r.teacher_why
            )],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::claims::verdict::Verdict;

    #[test]
    fn two_students_at_the_floor_are_not_evidence() {
        let o = at_floor("a", Some(0.0), "b", Some(0.0)).expect("both at 0");
        assert!(matches!(&o, Obstacle::Unreliable(w) if w.contains("both score 0")), "{o:?}");
        let j = judge(
            verdict::Expectation::Within { margin: 3.0 },
            Some(&Estimate::interval(0.0, 0.0, 0.0)),
            &[o],
        );
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.why);
        assert!(at_floor("a", Some(0.0), "b", Some(4.2)).is_none());
        assert!(at_floor("a", None, "b", Some(0.0)).is_none());
    }

    #[test]
    fn students_below_their_baselines_make_a_difference_inconclusive_or_are_named() {
        let test = |better: bool| BaselineTest {
            baseline: "copy the input".into(),
            metric: crate::evaluator::Metric::ChrfPlusPlus,
            delta: if better { 5.0 } else { -3.0 },
            p_value: if better { 0.001 } else { 0.9 },
            better,
        };
        let (no, yes) = (test(false), test(true));
        let (o, r) = learned_nothing(&[("a", Some(&no)), ("b", Some(&no))]);
        let o = o.expect("neither learned");
        assert!(r.is_none());
        let j = judge(
            verdict::Expectation::Above { threshold: 0.0 },
            Some(&Estimate::interval(4.0, 1.0, 7.0)),
            &[o],
        );
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.why);
        assert!(j.why.contains("learned nothing"), "{}", j.why);
        let (o, r) = learned_nothing(&[("a", Some(&yes)), ("b", Some(&no))]);
        assert!(o.is_none());
        let r = r.expect("b is named");
        assert!(r.contains("`b`") && !r.contains("`a`"), "{r}");
        assert_eq!(learned_nothing(&[("a", Some(&yes)), ("b", None)]), (None, None));
        // The teacher comparison has one student: below its baseline, the claim is inconclusive.
        assert!(learned_nothing(&[("a", Some(&no))]).0.is_some());
    }
}
