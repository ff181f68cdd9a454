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

/// Before the first paid call of a generation still to do: print the estimate, and go on only
/// when the budget covers it or the person said yes. Returns the paid calls this invocation may
/// make (the budget at the estimated price of one call), None when unlimited.
pub fn gate(
    cfg: &RunConfig,
    resolved: &Resolved,
    prompt: &str,
    generation_pending: bool,
    confirm: Option<&ConfirmCost>,
) -> Result<Option<u64>> {
    let Some(est) = estimate_generation_cost(cfg, resolved, prompt).filter(|_| generation_pending)
    else {
        return Ok(None);
    };
    eprintln!(
        "estimate: about {} requests, {} prompt + {} completion tokens, ${:.2} at {}'s prices",
        est.requests, est.prompt_tokens, est.completion_tokens, est.usd, est.model
    );
    let covered = cfg.budget_usd.is_some_and(|b| b >= est.usd);
    let confirmed = !covered && confirm.is_some_and(|ask| ask(&est));
    if !covered && !confirmed {
        bail!(
            "generation would cost about ${:.2} ({} requests to {}); pass --budget {:.2} (or more) to allow it",
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
