//! The Hugging Face hub's cards: a model folder's `README.md` (YAML front matter the hub reads —
//! licence, base model, datasets, pipeline tag, tags, `model-index` with the run's metrics and
//! their intervals — then the model card) and the run's `dataset/` folder (the generated
//! examples as parquet splits with their provenance, and a dataset card with the generation's
//! settings, teacher, cost, what was removed, and the licence).
//!
//! The YAML is written by [`to_yaml`] from JSON values: block style, every string double-quoted
//! with JSON's escapes (which YAML's double-quoted scalars share), so no value can be misread as
//! another type (`no`, `1.0`, `null`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::transformers::Architecture;
use crate::dataset_generator::GenerationLog;
use crate::pipeline::assemble::{rows_frame, Row};
use crate::pipeline::evaluate::MetricResult;

/// One source of the model's weights or data and its licence as the registries state it.
#[derive(Debug, Clone, PartialEq)]
pub struct Licence {
    /// What it covers: `base model all-MiniLM-L6-v2`, `generated data`, …
    pub what: String,
    /// As stated (`Apache-2.0`, `CC BY-SA 4.0`, `unknown`, the teacher's terms of use…).
    pub licence: String,
}

/// The hub's licence id of a licence as the registries write it, when it is one the hub knows.
pub fn hub_licence_id(stated: &str) -> Option<&'static str> {
    let norm: String = stated
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let norm = norm.trim_matches('-');
    Some(match norm {
        "apache-2.0" => "apache-2.0",
        "mit" => "mit",
        "cc-by-4.0" => "cc-by-4.0",
        "cc-by-sa-4.0" => "cc-by-sa-4.0",
        "cc-by-sa-3.0" => "cc-by-sa-3.0",
        "cc-by-nc-4.0" => "cc-by-nc-4.0",
        "cc0-1.0" => "cc0-1.0",
        "bsd-3-clause" => "bsd-3-clause",
        "llama3.2" => "llama3.2",
        _ => return None,
    })
}

/// The licence fields of the front matter: one hub id when every source states the same known
/// licence, else `other` with a name and a pointer to the card's licence section (the hub asks
/// for both with `other`).
pub fn licence_fields(licences: &[Licence]) -> Map<String, Value> {
    let ids: Vec<Option<&str>> = licences.iter().map(|l| hub_licence_id(&l.licence)).collect();
    let mut map = Map::new();
    match ids.first() {
        Some(Some(first)) if ids.iter().all(|i| i == &Some(*first)) => {
            map.insert("license".into(), (*first).into());
        }
        _ => {
            map.insert("license".into(), "other".into());
            map.insert("license_name".into(), "mixed-or-unknown".into());
            map.insert("license_link".into(), "README.md".into());
        }
    }
    map
}

/// The Markdown section that says each source's licence (the README's `license_link` target).
pub fn licence_section(licences: &[Licence]) -> String {
    let mut s = String::from("## Licence\n\n");
    for l in licences {
        let _ = writeln!(s, "- {}: {}", l.what, l.licence);
    }
    s
}

/// The hub's metric type for a metric of the evaluator.
fn hub_metric_type(metric: &str) -> String {
    match metric {
        "em" | "em-squad" | "exact-match" => "exact_match".into(),
        "chrf++" | "chrf" => "chrf".into(),
        "bertscore" => "bertscore".into(),
        "accuracy" => "accuracy".into(),
        "macro-f1" => "f1".into(),
        other => other.replace('-', "_"),
    }
}

/// What the model's front matter says.
pub struct ModelFacts<'a> {
    pub name: &'a str,
    pub architecture: Architecture,
    /// The hub repository the student was initialised from (none for a random initialisation).
    pub base_model: Option<String>,
    /// Hub dataset repositories the model was trained or evaluated on.
    pub datasets: Vec<String>,
    pub licences: &'a [Licence],
    pub metrics: &'a [MetricResult],
    /// Per test set (`generated`, `real`): the dataset's hub id or registry id, and its name.
    pub test_sets: Vec<(String, String, String)>,
}

/// The model README's front matter as a JSON value (written with [`to_yaml`]).
pub fn model_front_matter(f: &ModelFacts) -> Value {
    let mut m = licence_fields(f.licences);
    m.insert("library_name".into(), "transformers".into());
    m.insert("pipeline_tag".into(), f.architecture.pipeline_tag().into());
    if let Some(base) = &f.base_model {
        m.insert("base_model".into(), base.clone().into());
    }
    if !f.datasets.is_empty() {
        m.insert("datasets".into(), json!(f.datasets));
    }
    m.insert(
        "tags".into(),
        json!([
            "prompt2model",
            "p2m",
            "distillation",
            "synthetic-data",
            f.architecture.pipeline_tag()
        ]),
    );
    let mut results = Vec::new();
    for (test_set, dataset_type, dataset_name) in &f.test_sets {
        let metrics: Vec<Value> = f
            .metrics
            .iter()
            .filter(|r| &r.test_set == test_set)
            .map(|r| {
                json!({
                    "type": hub_metric_type(&r.metric),
                    "name": format!("{} (95 % CI {:.2}–{:.2}, n = {})", r.metric, r.low, r.high, r.n),
                    "value": r.value,
                    "args": {"ci95_low": r.low, "ci95_high": r.high, "n": r.n, "signature": r.signature},
                    "verified": false,
                })
            })
            .collect();
        if metrics.is_empty() {
            continue;
        }
        results.push(json!({
            "task": {"type": f.architecture.pipeline_tag(), "name": f.architecture.pipeline_tag()},
            "dataset": {"type": dataset_type, "name": dataset_name, "split": "test"},
            "metrics": metrics,
        }));
    }
    m.insert("model-index".into(), json!([{"name": f.name, "results": results}]));
    Value::Object(m)
}

/// A card: `---`, the front matter, `---`, the Markdown body.
pub fn with_front_matter(front: &Value, body: &str) -> String {
    format!("---\n{}---\n\n{}", to_yaml(front), body)
}

/// Block-style YAML of a JSON value (see the module docs).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    write_yaml(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("a string serialises"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A key as it is when it is a plain word (`model-index`, `license_name`), else quoted.
fn yaml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        k.to_string()
    } else {
        scalar(&Value::String(k.to_string()))
    }
}

fn is_empty_collection(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.is_empty()) || matches!(v, Value::Object(o) if o.is_empty())
}

fn write_yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                let key = yaml_key(k);
                match val {
                    _ if is_empty_collection(val) => {
                        let _ = writeln!(out, "{pad}{key}: {val}");
                    }
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{key}:");
                        write_yaml(val, indent + 2, out);
                    }
                    Value::Array(_) => {
                        let _ = writeln!(out, "{pad}{key}:");
                        write_yaml(val, indent, out);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key}: {}", scalar(val));
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    _ if is_empty_collection(item) => {
                        let _ = writeln!(out, "{pad}- {item}");
                    }
                    Value::Object(_) | Value::Array(_) => {
                        // The item's first line after `- `, the rest indented to match.
                        let mut inner = String::new();
                        write_yaml(item, indent + 2, &mut inner);
                        let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

/// The hub's `size_categories` bucket of a row count.
fn size_category(rows: usize) -> &'static str {
    match rows {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        _ => "100K<n<1M",
    }
}

/// What the dataset card says besides the rows.
pub struct DatasetFacts<'a> {
    pub name: &'a str,
    pub instruction: &'a str,
    /// Who generated the rows (`openai fake-model`, the recorded teacher…).
    pub teacher: &'a str,
    /// The generation's log (requests, cost, what was removed), when a live teacher generated.
    pub log: Option<&'a GenerationLog>,
    pub licence: Licence,
    pub architecture: Architecture,
}

/// Writes `dir` (atomically) with `<split>.parquet` of the generated rows of each assembled split
/// (`input`, `output`, `task_id`, `provenance`) and its `README.md`; returns the row counts.
pub fn write_dataset_folder(
    dir: &Path,
    splits: &[(&str, Vec<Row>)],
    facts: &DatasetFacts,
) -> Result<Vec<(String, usize)>> {
    // The generated rows only: a retrieved dataset keeps its own card and licence upstream.
    let generated: Vec<(&str, Vec<Row>)> = splits
        .iter()
        .map(|(name, rows)| (*name, rows.iter().filter(|r| r.task_id == 0).cloned().collect()))
        .collect();
    let counts: Vec<(String, usize)> =
        generated.iter().map(|(n, rows)| (n.to_string(), rows.len())).collect();
    crate::util::fs::write_dir_atomic(dir, |d: &Path| -> Result<()> {
        for (name, rows) in &generated {
            crate::util::fs::write_parquet_atomic(
                &rows_frame(rows)?,
                &d.join(format!("{name}.parquet")),
            )?;
        }
        let card = dataset_card(facts, &counts);
        crate::util::fs::write_atomic(&d.join("README.md"), card.as_bytes())?;
        Ok(())
    })?;
    Ok(counts)
}

/// The dataset's README.md: front matter (licence, task, size, the parquet splits) and the card.
pub fn dataset_card(f: &DatasetFacts, counts: &[(String, usize)]) -> String {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let mut front = licence_fields(std::slice::from_ref(&f.licence));
    front.insert("pretty_name".into(), format!("{} (generated by prompt2model-rs)", f.name).into());
    front.insert("task_categories".into(), json!([f.architecture.pipeline_tag()]));
    front.insert("size_categories".into(), json!([size_category(total)]));
    front.insert("tags".into(), json!(["synthetic", "prompt2model", "p2m"]));
    let files: Vec<Value> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, _)| json!({"split": s, "path": format!("{s}.parquet")}))
        .collect();
    front.insert("configs".into(), json!([{"config_name": "default", "data_files": files}]));

    let mut s = format!(
        "# {} — generated data\n\nExamples from the prompt's instruction and demonstrations; teacher: {}. \
         The training data of the model `{}` (prompt2model-rs, `p2m run`): each split is the run's assembled split \
         (train: the rows trained on, after the scale's cut), generated rows only.\n\n## Task\n\n{}\n\n## Splits\n\n",
        f.name,
        f.teacher,
        f.name,
        f.instruction.trim()
    );
    s.push_str("| split | rows |\n|---|---:|\n");
    for (split, n) in counts {
        let _ = writeln!(s, "| {split} | {n} |");
    }
    s.push_str("\nColumns: `input`, `output`, `task_id` (0: generated), `provenance` (`generated:<teacher>`).\n\n## Generation\n\n");
    match f.log {
        Some(l) => {
            let _ = writeln!(
                s,
                "- teacher: {} `{}`; target {} examples, {} accepted over {} rounds\n\
                 - requests: {} ({} failed), {} choices, {} replayed from the cache\n\
                 - cost: ${:.4} ({} prompt and {} completion tokens billed)\n\
                 - removed: {} duplicate inputs, {} conflicting inputs resolved by self-consistency, {} candidates rejected{}",
                l.backend,
                l.model,
                l.target,
                l.accepted,
                l.rounds,
                l.requests,
                l.failed_requests,
                l.choices,
                l.cached_responses,
                l.cost_usd,
                l.prompt_tokens,
                l.completion_tokens,
                l.duplicate_inputs,
                l.conflicting_inputs,
                l.rejected.values().sum::<u64>(),
                if l.rejected.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        l.rejected.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
                    )
                }
            );
            if !l.temperature_curve.is_empty() {
                let temps: Vec<String> =
                    l.temperature_curve.iter().map(|p| format!("{:.2}", p.temperature)).collect();
                let _ = writeln!(s, "- temperature by round: {}", temps.join(", "));
            }
            if !l.templates.is_empty() {
                let t: Vec<String> = l.templates.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(s, "- prompt templates used: {}", t.join(", "));
            }
        }
        None => s.push_str(
            "- no generation log: the examples were not generated in this run (recorded generations), so requests, cost and removals are not known here\n",
        ),
    }
    let _ = write!(
        s,
        "\n{}\nThe outputs are a model's, not checked by people: they may be wrong, and the test split \
         measures agreement with the teacher, not truth.\n",
        licence_section(std::slice::from_ref(&f.licence))
    );
    with_front_matter(&Value::Object(front), &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_nests_lists_of_maps_and_quotes_every_string() {
        let v = json!({
            "license": "other",
            "tags": ["a", "no"],
            "empty": [],
            "model-index": [{"name": "x", "results": [{"metrics": [{"value": 1.5, "name": "em: \"q\""}]}]}],
        });
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "empty: []\nlicense: \"other\"\nmodel-index:\n- name: \"x\"\n  results:\n  - metrics:\n    - name: \"em: \\\"q\\\"\"\n      value: 1.5\ntags:\n- \"a\"\n- \"no\"\n"
        );
    }

    #[test]
    fn the_model_index_holds_each_metric_with_its_interval_per_test_set() {
        let metric = |set: &str, name: &str, value: f64| MetricResult {
            test_set: set.into(),
            metric: name.into(),
            value,
            low: value - 1.0,
            high: value + 1.0,
            n: 16,
            signature: "sig".into(),
        };
        let metrics = [metric("generated", "chrf++", 40.0), metric("real", "em", 12.5)];
        let licences = [Licence { what: "base model".into(), licence: "Apache-2.0".into() }];
        let front = model_front_matter(&ModelFacts {
            name: "capitals",
            architecture: Architecture::CausalLm,
            base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
            datasets: vec![],
            licences: &licences,
            metrics: &metrics,
            test_sets: vec![
                ("generated".into(), "p2m-generated".into(), "generated".into()),
                ("real".into(), "squad".into(), "SQuAD".into()),
            ],
        });
        assert_eq!(front["license"], "apache-2.0");
        assert_eq!(front["pipeline_tag"], "text-generation");
        assert!(front.get("datasets").is_none(), "no empty datasets list");
        let results = front["model-index"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[1]["dataset"]["type"], "squad");
        let m = &results[1]["metrics"][0];
        assert_eq!((m["type"].as_str(), m["value"].as_f64()), (Some("exact_match"), Some(12.5)));
        assert_eq!(
            (m["args"]["ci95_low"].as_f64(), m["args"]["n"].as_u64()),
            (Some(11.5), Some(16))
        );
        let card = with_front_matter(&front, "# capitals\n");
        assert!(card.starts_with("---\nbase_model: \"HuggingFaceTB/SmolLM2-135M-Instruct\"\n"));
        assert!(card.ends_with("---\n\n# capitals\n"));
    }

    #[test]
    fn one_known_licence_is_named_and_anything_else_is_other() {
        let l = |s: &str| Licence { what: "x".into(), licence: s.into() };
        let one = licence_fields(&[l("Apache-2.0"), l("apache 2.0")]);
        assert_eq!(one["license"], "apache-2.0");
        let mixed = licence_fields(&[l("Apache-2.0"), l("the teacher's terms of use")]);
        assert_eq!(mixed["license"], "other");
        assert!(mixed.contains_key("license_name") && mixed.contains_key("license_link"));
        assert_eq!(hub_licence_id("CC BY-SA 4.0"), Some("cc-by-sa-4.0"));
    }
}
