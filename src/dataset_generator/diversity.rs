//! The paper's ablation of high-diversity few-shot prompting.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::{GenerateError, GeneratorConfig, Stopped};
use super::run::{Core, StopAt};
use crate::data::examples::Example;
use crate::prompt_parser::ParsedPrompt;
use crate::teacher::Teacher;

/// Duplicates among `n` raw generated examples of one arm of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiversityArm {
    pub high_diversity: bool,
    pub examples: usize,
    pub unique_inputs: usize,
    /// `examples − unique_inputs`.
    pub duplicate_inputs: usize,
    pub requests: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiversityReport {
    pub n: usize,
    pub with_high_diversity: DiversityArm,
    pub without_high_diversity: DiversityArm,
}

/// The paper's ablation of high-diversity few-shot prompting: generate `n` raw examples with
/// and without previously generated examples in the prompt and count duplicate inputs (the
/// paper's numbers are in `data/paper_results.toml`, `[diversity]`). Both arms use `cfg`
/// otherwise (seed, temperatures, batch sizes); nothing is written to disk.
pub async fn diversity_experiment(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    n: usize,
    cfg: &GeneratorConfig,
) -> Result<DiversityReport, GenerateError> {
    let mut cfg = cfg.clone();
    cfg.num_examples = n;
    cfg.validate()?;
    let arm = |high: bool| {
        let mut c = cfg.clone();
        c.high_diversity = high;
        c
    };
    let (with_cfg, without_cfg) = (arm(true), arm(false));
    let mut arms = Vec::new();
    for c in [&with_cfg, &without_cfg] {
        let mut core = Core::new(teacher, prompt, c, n);
        if let Some((reason, source)) = core.run(StopAt::Raw(n), None, None).await? {
            let examples = core.candidates.clone();
            return Err(GenerateError::Stopped(Box::new(Stopped {
                reason,
                source,
                target: n,
                checkpoint: PathBuf::new(),
                examples,
                log: core.log,
            })));
        }
        let first: Vec<&Example> = core.candidates.iter().take(n).collect();
        let unique = first.iter().map(|e| e.input.as_str()).collect::<HashSet<_>>().len();
        arms.push(DiversityArm {
            high_diversity: c.high_diversity,
            examples: first.len(),
            unique_inputs: unique,
            duplicate_inputs: first.len() - unique,
            requests: core.log.requests,
        });
    }
    let without = arms.pop().expect("two arms");
    let with = arms.pop().expect("two arms");
    Ok(DiversityReport { n, with_high_diversity: with, without_high_diversity: without })
}
