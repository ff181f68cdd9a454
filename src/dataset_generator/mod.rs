//! The dataset generator (Prompt2Model §3.3): synthetic `(input, output)` examples from a parsed
//! prompt through a teacher LLM, following the reference implementation
//! (neulab/prompt2model, `dataset_generator/openai_gpt.py` and `openai_gpt_template.py` as of the
//! paper, summer 2023):
//!
//! - **High-diversity few-shot prompting**: every request shows the user's demonstrations (the
//!   "high-quality examples") plus a random `k ∈ [1, min(accepted, 10)]` previously accepted
//!   generated examples (the "low-quality examples"; `N/A` while there are none); the prompt
//!   template is chosen by `k mod 3` (1 → COMPLEX with 4 meta-examples of other tasks, 2 → MIDDLE
//!   with 3, 0 → SIMPLE with 2), the meta-examples drawn at random from 24; a prompt whose
//!   estimated length reaches the context cutoff (3,500 tokens) is drawn again.
//! - **Temperature annealing**: `T = T0 + (Tmax − T0) · accepted / N`, clipped to [0, 2]
//!   (defaults 0.5 → 1.7; the paper's SQuAD run used 0.3 → 1.4).
//! - Responses are parsed as JSON objects with `input` and `output`, robust to code fences,
//!   prose around the JSON, raw newlines inside strings and cut-off output (every complete object
//!   is recovered); `input="…" output="…"` answers are accepted too.
//! - **Self-consistency filtering**: candidates are grouped by input; each input keeps its most
//!   frequent output (tie → the shortest, then the first seen).
//! - Stops at `N` accepted unique examples. Batches of `min(max_batch_size, ⌈(N − accepted) /
//!   responses_per_request⌉)` requests, `responses_per_request` choices each.
//!
//! Every random choice comes from one seeded [`SplitMix64`], so a run is reproducible: with the
//! same teacher answers (a record/replay cache) it makes exactly the same requests. Progress is
//! journaled to `checkpoint.jsonl` in the output directory after every round (the new candidates,
//! the newly accepted examples, the RNG state and the counters, appended and fsynced); a rerun
//! resumes from it, and together with [`crate::teacher::CachedTeacher`] a run killed at any point
//! repeats no billed call whose answer was recorded.

mod config;
mod diversity;
mod extract;
mod journal;
pub mod report;
mod run;
mod templates;

pub use config::{
    GenerateError, GenerationLog, GeneratorConfig, Stopped, TemperaturePoint, CHECKPOINT_FILE,
    EXAMPLES_FILE, LOG_FILE,
};
pub use diversity::{diversity_experiment, DiversityArm, DiversityReport};
pub use extract::{extract_examples, self_consistency, Extraction};
pub use run::{default_progress_bar, generate};
pub use templates::{build_prompt, render_prompt, BuiltPrompt, Template};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::examples::Example;
    use crate::util::rng::SplitMix64;

    #[test]
    fn extraction_is_robust() {
        let e = extract_examples("Sure! Here it is:\n```json\n{\"input\": \"a\", \"output\": \"b\"}\n```\nHope that helps.");
        assert_eq!(e.examples, vec![Example::new("a", "b")]);
        let e = extract_examples("[{\"input\": \"a\", \"output\": \"b\"}, {\"input\": \"c\", \"output\": \"d\"}, {\"input\": \"e\", \"out");
        assert_eq!(e.examples, vec![Example::new("a", "b"), Example::new("c", "d")]);
        let e = extract_examples("{\"input\": \"line1\nline2\", \"output\": 3,}");
        assert_eq!(e.examples, vec![Example::new("line1\nline2", "3")]);
        let e = extract_examples("{\"example\": {\"Input\": \"x\", \"Output\": \"y\"}}");
        assert_eq!(e.examples, vec![Example::new("x", "y")]);
        let e = extract_examples("input=\"q\"\noutput=\"r\"");
        assert_eq!(e.examples, vec![Example::new("q", "r")]);
        assert_eq!(extract_examples("{\"question\": \"x\"}").rejected, Some("missing_keys"));
        assert_eq!(
            extract_examples("{\"input\": \"\", \"output\": \"y\"}").rejected,
            Some("empty_field")
        );
        assert_eq!(extract_examples("{\"input\": \"x\", \"outp").rejected, Some("truncated_json"));
        assert_eq!(extract_examples("no idea").rejected, Some("no_json"));
        let e = extract_examples("{\"input\": \"brace } in string\", \"output\": \"ok\"}");
        assert_eq!(e.examples, vec![Example::new("brace } in string", "ok")]);
    }

    #[test]
    fn voting() {
        let c = vec![
            Example::new("a", "long answer"),
            Example::new("b", "1"),
            Example::new("a", "short"),
            Example::new("a", "long answer"),
            Example::new("c", "xx"),
            Example::new("c", "yy"),
            Example::new("d", "longer"),
            Example::new("d", "short"),
        ];
        let (v, conflicts) = self_consistency(&c);
        assert_eq!(
            v,
            vec![
                Example::new("a", "long answer"),
                Example::new("b", "1"),
                Example::new("c", "xx"),
                Example::new("d", "short")
            ]
        );
        assert_eq!(conflicts, 3);
    }

    #[test]
    fn annealing() {
        let cfg = GeneratorConfig::default();
        assert!((cfg.temperature(0, 100) - 0.5).abs() < 1e-12);
        assert!((cfg.temperature(50, 100) - 1.1).abs() < 1e-12);
        assert!((cfg.temperature(100, 100) - 1.7).abs() < 1e-12);
        let wild = GeneratorConfig {
            initial_temperature: 1.5,
            max_temperature: 2.0,
            ..Default::default()
        };
        assert!(wild.temperature(300, 100) <= 2.0);
        let squad = GeneratorConfig::paper_squad();
        assert!((squad.temperature(100, 100) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn templates_follow_k() {
        let mut rng = SplitMix64::new(1);
        let cfg = GeneratorConfig::default();
        let p = build_prompt(&mut rng, "Do X.", "input=\"1\"\noutput=\"2\"", &[], &cfg);
        assert_eq!((p.k, p.template), (0, Template::Simple));
        assert!(p.text.contains("[low-quality examples]:\nN/A\n\n"));
        assert!(p.text.contains("- Example 2") && !p.text.contains("- Example 3"));
        assert!(p.text.starts_with("\n\nAs a DatasetGenerator"));
        assert!(p.text.ends_with("\n[new example (in JSON)]:"));
        let gen: Vec<Example> =
            (0..30).map(|i| Example::new(format!("in{i}"), format!("out{i}"))).collect();
        for _ in 0..50 {
            let p = build_prompt(&mut rng, "Do X.", "hq", &gen, &cfg);
            assert!((1..=10).contains(&p.k));
            assert_eq!(p.template, Template::for_k(p.k));
            assert_eq!(p.text.matches("input=\"in").count(), p.k);
        }
    }
}
