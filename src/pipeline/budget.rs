//! A paid teacher's cost, before its first call: the estimate, and the gate that lets a run
//! spend only what `--budget` (or a person at the terminal) allowed.

use anyhow::{bail, Result};
use serde::Serialize;

use super::config::{Resolved, RunConfig, TeacherSource};

/// A paid teacher's cost before its first call.
#[derive(Debug, Clone, Serialize)]
pub struct CostEstimate {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub usd: f64,
    pub model: String,
}

/// A person's yes or no to a paid generation's estimate.
pub type ConfirmCost = Box<dyn Fn(&CostEstimate) -> bool>;

/// Estimated cost of generating `n` examples with a priced teacher (None for free ones).
pub fn estimate_generation_cost(
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
) -> Option<CostEstimate> {
    if cfg.teacher != TeacherSource::Openai {
        return None;
    }
    let pricing = crate::teacher::Pricing::for_model(&cfg.teacher_settings.model);
    if pricing == crate::teacher::Pricing::FREE {
        return None;
    }
    let g = &resolved.generator;
    // Twice the bare minimum of requests: duplicates and unparsable answers are usual.
    let requests =
        2 * (resolved.num_examples as u64).div_ceil(g.responses_per_request.max(1) as u64);
    // Each request: the template and meta-examples (~1,200 tokens), the prompt, and up to ten
    // earlier examples about as long as the prompt's own.
    let prompt_tokens = requests * (1200 + 2 * crate::teacher::estimate_tokens(prompt));
    let completion_tokens = requests * g.responses_per_request as u64 * 120;
    let usd = crate::teacher::Pricing::cost(
        &pricing,
        &crate::teacher::Usage { prompt_tokens, completion_tokens },
    );
    Some(CostEstimate {
        requests,
        prompt_tokens,
        completion_tokens,
        usd,
        model: cfg.teacher_settings.model.clone(),
    })
}

/// Estimated cost of transforming up to `rows` retrieved rows ([`crate::dataset_transformer`])
/// with the priced model `model` (None for free ones). The rows are not retrieved yet when the
/// run starts, so each is taken at the longest the prompt shows it
/// ([`crate::dataset_transformer::ROW_CHARS`]) and each answer at its token cap: an upper bound.
pub fn estimate_transform_cost(
    model: &str,
    prompt: &str,
    rows: usize,
    cfg: &crate::dataset_transformer::TransformConfig,
) -> Option<CostEstimate> {
    use crate::dataset_transformer::{ROW_CHARS, SAMPLE_ROW_CHARS};
    let pricing = crate::teacher::Pricing::for_model(model);
    if pricing == crate::teacher::Pricing::FREE || rows == 0 {
        return None;
    }
    let rows = rows.min(cfg.max_rows) as u64;
    // The prompts' own words (~150 tokens), the user's prompt, and a row at its longest (its
    // columns and, at half the length, its answer); ASCII text, about 4 characters a token.
    let task = 150 + crate::teacher::estimate_tokens(prompt);
    let row_tokens = |chars: usize| (chars + chars / 2).div_ceil(4) as u64;
    let plan_prompt = task + cfg.plan_rows.min(rows as usize) as u64 * row_tokens(SAMPLE_ROW_CHARS);
    let row_prompt = task + cfg.plan_max_tokens as u64 + row_tokens(ROW_CHARS);
    let prompt_tokens = plan_prompt + rows * row_prompt;
    let completion_tokens = cfg.plan_max_tokens as u64 + rows * cfg.row_max_tokens as u64;
    let usd = pricing.cost(&crate::teacher::Usage { prompt_tokens, completion_tokens });
    Some(CostEstimate {
        requests: 1 + rows,
        prompt_tokens,
        completion_tokens,
        usd,
        model: model.to_string(),
    })
}

/// The paid teacher work a run still has to do when it starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pending {
    /// The generation stage has not finished.
    pub generation: bool,
    /// Retrieved rows are to be transformed (the dataset retrieval stage, with the transform
    /// on, has not finished).
    pub transform: bool,
}

/// The estimates of what a run still has to pay for (generation, the transform step), summed.
pub fn estimate_pending_cost(
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
    pending: Pending,
) -> Option<CostEstimate> {
    let generation = estimate_generation_cost(cfg, resolved, prompt).filter(|_| pending.generation);
    let transform = match (&resolved.transform, cfg.teacher) {
        (Some(t), TeacherSource::Openai) if pending.transform => {
            estimate_transform_cost(&cfg.teacher_settings.model, prompt, t.max_rows, t)
        }
        _ => None,
    };
    match (generation, transform) {
        (Some(g), Some(t)) => Some(CostEstimate {
            requests: g.requests + t.requests,
            prompt_tokens: g.prompt_tokens + t.prompt_tokens,
            completion_tokens: g.completion_tokens + t.completion_tokens,
            usd: g.usd + t.usd,
            model: g.model,
        }),
        (g, t) => g.or(t),
    }
}

/// Before the first paid call of a generation or transform still to do: print the estimate, and
/// go on only when the budget covers it or the person said yes. Returns the paid calls this
/// invocation may make (the budget at the estimated price of one call), None when unlimited.
pub fn gate(
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
    pending: Pending,
    confirm: Option<&ConfirmCost>,
) -> Result<Option<u64>> {
    let Some(est) = estimate_pending_cost(cfg, resolved, prompt, pending) else {
        return Ok(None);
    };
    eprintln!(
        "estimate: about {} requests, {} prompt + {} completion tokens, ${:.2} at {}'s prices",
        est.requests, est.prompt_tokens, est.completion_tokens, est.usd, est.model
    );
    let covered = cfg.budget_usd.is_some_and(|b| b >= est.usd);
    let confirmed = !covered && confirm.is_some_and(|ask| ask(&est));
    if !covered && !confirmed {
        let what = match (pending.generation, pending.transform) {
            (true, true) => "generation and the transform of retrieved rows",
            (false, true) => "the transform of retrieved rows",
            _ => "generation",
        };
        bail!(
            "{what} would cost about ${:.2} ({} requests to {}); pass --budget {:.2} (or more) to allow it",
            est.usd,
            est.requests,
            est.model,
            (est.usd * 100.0).ceil() / 100.0
        );
    }
    Ok(cfg.budget_usd.map(|budget| {
        let per_call = est.usd / est.requests.max(1) as f64;
        (budget / per_call).floor() as u64
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset_transformer::TransformConfig;

    #[test]
    fn the_transform_is_estimated_for_priced_teachers_only() {
        let cfg = TransformConfig { max_rows: 10, ..Default::default() };
        assert!(estimate_transform_cost("local-smollm2", "Do X.", 10, &cfg).is_none());
        let e = estimate_transform_cost("gpt-3.5-turbo-0613", "Do X.", 50, &cfg).unwrap();
        assert_eq!(e.requests, 11, "the plan and one request per row, at the cap");
        assert_eq!(e.completion_tokens, 300 + 10 * 300);
        assert!(e.usd > 0.0);
        assert!(estimate_transform_cost("gpt-3.5-turbo-0613", "Do X.", 0, &cfg).is_none());
        let run = RunConfig {
            teacher: TeacherSource::Openai,
            transform_retrieved: true,
            transform_rows: Some(20),
            teacher_settings: crate::teacher::TeacherSettings {
                model: "gpt-3.5-turbo-0613".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let resolved = run.resolve(&data).unwrap();
        let only = |p| estimate_pending_cost(&run, &resolved, "Do X.", p).unwrap();
        let g = only(Pending { generation: true, transform: false });
        let t = only(Pending { generation: false, transform: true });
        assert_eq!(t.requests, 21);
        let both = only(Pending { generation: true, transform: true });
        assert_eq!(both.requests, g.requests + t.requests);
        assert!((both.usd - g.usd - t.usd).abs() < 1e-12);
        assert!(estimate_pending_cost(&run, &resolved, "Do X.", Pending::default()).is_none());
        // The gate stops a transform its budget does not cover, naming it, and lets one through
        // that it covers, with the calls the budget buys.
        let transform = Pending { generation: false, transform: true };
        let small = RunConfig { budget_usd: Some(t.usd / 2.0), ..run.clone() };
        let err = gate(&small, &resolved, "Do X.", transform, None).unwrap_err().to_string();
        assert!(err.starts_with("the transform of retrieved rows would cost"), "{err}");
        let enough = RunConfig { budget_usd: Some(t.usd * 2.0), ..run.clone() };
        let calls = gate(&enough, &resolved, "Do X.", transform, None).unwrap().unwrap();
        assert!((41..=42).contains(&calls), "twice the estimate buys twice its 21 calls: {calls}");
    }
}
