//! A packaged run as its users take it elsewhere: `runs/<name>/model/` loaded by transformers'
//! Auto classes with no extra arguments (tests/reference/transformers_generate.py, in the
//! reference venv `$P2M_PYTHON`) greedy-decodes, through the folder's chat template and
//! generation config, exactly what `p2m predict` writes — a BERT2BERT student (the smoke scale's),
//! a decoder student cut to two layers and one of the laptop scale's shape (the whole SmolLM2) —
//! and the run's cards read by the hub's own
//! client (tests/reference/hub_cards.py: huggingface_hub's ModelCard / DatasetCard and its
//! `model-index` parser) with the fields the hub shows.
//!
//! Tolerance: exact. The same prompt token ids, and the same decoded text for every input. The
//! reference generates one input per call (a padded transformers batch counts the padding in the
//! repetition penalty; see `Llama::generate`); `p2m predict` batches as its `p2m.json` says.

use std::path::Path;

use prompt2model::pipeline::package::ModelManifest;
use prompt2model::trainer::model_input;

use crate::common;
use crate::fake_openai::{FakeServer, ServerConfig};
use crate::pipeline::{fake_args, ok, p2m, prompt_file, run_blocking, PROMPT};

/// Inputs with quotes, non-ASCII, a newline and a long one.
const INPUTS: [&str; 5] = [
    "Chile",
    "Spain",
    "the Republic of \"Côte d'Ivoire\"",
    "New\nZealand",
    "a country whose name is rather long: the United Kingdom of Great Britain and Northern Ireland",
];

/// `p2m predict` on the inputs: the predictions in input order.
async fn p2m_predict(runs: &Path, model: &Path, inputs: &Path, out: &Path) -> Vec<String> {
    let args = [
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    ok(run_blocking(p2m(runs, &args)).await);
    let frame = prompt2model::report::read_parquet(out).unwrap();
    prompt2model::data::loaders::string_column(&frame, "prediction").unwrap()
}

/// transformers' greedy outputs on the packaged folder equal `p2m predict`'s; returns how many
/// tokens the reference generated in all (so a test can see the comparison is not of empty outputs).
async fn transformers_agrees_with_p2m_predict(
    runs: &Path,
    model: &Path,
    work: &Path,
    expect: (&str, &str),
) -> usize {
    let inputs = work.join("inputs.jsonl");
    let lines: String =
        INPUTS.iter().map(|i| serde_json::json!({ "input": i }).to_string() + "\n").collect();
    std::fs::write(&inputs, lines).unwrap();
    let ours = p2m_predict(runs, model, &inputs, &work.join("predictions.parquet")).await;
    let theirs =
        common::reference("transformers_generate.py", &[model, &inputs], &work.join("hf.json"));
    assert_eq!(theirs["auto_class"], expect.0, "{theirs}");
    assert_eq!(theirs["model_class"], expect.1, "{theirs}");
    assert_eq!(theirs["tokenizer_class"], "TokenizersBackend", "{theirs}");

    let manifest = ModelManifest::read(model).unwrap();
    let exec = &manifest.executor;
    let g = &theirs["generation"];
    assert_eq!(g["do_sample"], false);
    assert_eq!(g["num_beams"], 1);
    assert_eq!(g["max_new_tokens"], exec.max_new_tokens);
    assert_eq!(g["repetition_penalty"].as_f64().unwrap(), exec.repetition_penalty);

    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let template = theirs["input_template"].as_str().expect("p2m_input_template is read");
    let mut tokens = 0;
    for (i, (row, ours)) in theirs["rows"].as_array().unwrap().iter().zip(&ours).enumerate() {
        let input = INPUTS[i];
        let source = model_input(manifest.task_id, &manifest.instruction, input);
        // The documented field: the last `{input}` is where the input goes.
        let (head, tail) = template.rsplit_once("{input}").unwrap();
        assert_eq!(format!("{head}{input}{tail}"), source);
        // The chat template's ids are the ones p2m feeds (special tokens included).
        let ids: Vec<i64> = tok
            .encode(source.as_str(), true)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&t| t as i64)
            .collect();
        let prompt: Vec<i64> =
            row["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(prompt, ids, "input {input:?}: the chat template's tokens");
        assert_eq!(
            row["text"].as_str().unwrap(),
            ours,
            "input {input:?}: transformers vs p2m predict"
        );
        let n = row["generated_ids"].as_array().unwrap().len();
        eprintln!("{}: {input:?} → {ours:?} ({n} tokens, equal)", expect.1);
        tokens += n;
    }
    assert_eq!(ours.len(), INPUTS.len());
    tokens
}

/// The model README's front matter as the hub reads it: required fields present and typed, the
/// model index holding every metric of the run with its interval; the dataset card's splits.
fn hub_cards_are_valid(run: &Path, work: &Path, pipeline_tag: &str, base_model: Option<&str>) {
    let model = run.join("model");
    let dataset = run.join("dataset");
    let cards = common::reference(
        "hub_cards.py",
        &[&model.join("README.md"), &dataset.join("README.md")],
        &work.join("cards.json"),
    );
    let m = &cards["model"];
    let licence = m["license"].as_str().expect("license is a string");
    if licence == "other" {
        assert!(m["license_name"].is_string() && m["license_link"].is_string(), "{m}");
    }
    assert_eq!(m["pipeline_tag"], pipeline_tag);
    assert_eq!(m["library_name"], "transformers");
    assert!(m["tags"].as_array().unwrap().iter().any(|t| t == "prompt2model"), "{m}");
    assert_eq!(m["base_model"].as_str(), base_model, "{m}");
    let readme = std::fs::read_to_string(model.join("README.md")).unwrap();
    let body = std::fs::read_to_string(model.join("model_card.md")).unwrap();
    assert!(
        readme.ends_with(&body) && readme.starts_with("---\n"),
        "README.md = front matter + card"
    );
    assert!(body.contains("## Licence") && body.contains("apply_chat_template"), "{body}");

    // Every metric of the run is in the model index, with its interval and n.
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("evaluation/metrics.json")).unwrap(),
    )
    .unwrap();
    let results = cards["eval_results"].as_array().unwrap();
    for r in metrics.as_array().unwrap() {
        let found = results
            .iter()
            .find(|e| {
                e["metric_name"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{} (", r["metric"].as_str().unwrap()))
                    && e["metric_value"] == r["value"]
                    && e["metric_args"]["ci95_low"] == r["low"]
                    && e["metric_args"]["ci95_high"] == r["high"]
                    && e["metric_args"]["n"] == r["n"]
            })
            .unwrap_or_else(|| panic!("{r} not in the model index {results:?}"));
        assert_eq!(found["task_type"], pipeline_tag);
        assert!(found["dataset_type"].is_string() && found["dataset_name"].is_string());
    }

    // The dataset folder: the generated rows of each assembled split, with their provenance, and
    // a card with the generation's teacher, requests, cost and removals (from its log).
    let d = &cards["dataset"];
    let card = std::fs::read_to_string(dataset.join("README.md")).unwrap();
    let log: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("generation/generation_log.json")).unwrap(),
    )
    .unwrap();
    for needed in [
        format!(
            "teacher: {} `{}`",
            log["backend"].as_str().unwrap(),
            log["model"].as_str().unwrap()
        ),
        format!("cost: ${:.4}", log["cost_usd"].as_f64().unwrap()),
        format!("removed: {} duplicate inputs", log["duplicate_inputs"]),
        "## Licence".to_string(),
    ] {
        assert!(card.contains(&needed), "the dataset card lacks {needed:?}:\n{card}");
    }
    assert!(d["license"].is_string() && d["task_categories"][0] == pipeline_tag, "{d}");
    let files = d["configs"][0]["data_files"].as_array().unwrap();
    assert!(!files.is_empty(), "{d}");
    for split in ["train", "validation", "test"] {
        let text = std::fs::read_to_string(run.join(format!("assembly/{split}.jsonl"))).unwrap();
        let generated = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["task_id"] == 0)
            .count();
        let frame =
            prompt2model::report::read_parquet(&dataset.join(format!("{split}.parquet"))).unwrap();
        assert_eq!(frame.height(), generated, "{split}");
        let provenance = prompt2model::data::loaders::string_column(&frame, "provenance").unwrap();
        assert!(provenance.iter().all(|p| p.starts_with("generated:")), "{provenance:?}");
        if generated > 0 {
            assert!(files
                .iter()
                .any(|f| f["split"] == split && f["path"] == format!("{split}.parquet")));
        }
    }
}

/// A smoke run of `student` (the model retriever's pick when `None`) against the fake teacher,
/// packaged; transformers on its folder against `p2m predict`, then its cards.
async fn run_package_and_compare(
    student: Option<&str>,
    classes: (&str, &str),
    pipeline_tag: &str,
    base_model: &str,
) {
    let server = FakeServer::start(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (runs, prompt) = (dir.path().join("runs"), prompt_file(dir.path(), PROMPT));
    let mut args = fake_args(prompt.to_str().unwrap(), &server.base_url, "capitals");
    if let Some(s) = student {
        args.extend(["--student", s]);
    }
    ok(run_blocking(p2m(&runs, &args)).await);
    let run = runs.join("capitals");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tokens =
        transformers_agrees_with_p2m_predict(&runs, &run.join("model"), &work, classes).await;
    assert!(tokens > INPUTS.len(), "{}: only {tokens} tokens generated in all", classes.1);
    hub_cards_are_valid(&run, &work, pipeline_tag, Some(base_model));
}

/// The smoke scale's BERT2BERT (the model retriever picks the MiniLM warm start; one epoch), as
/// an EncoderDecoderModel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_bert2bert_loads_in_transformers_and_generates_what_p2m_predict_does() {
    run_package_and_compare(
        None,
        ("AutoModelForSeq2SeqLM", "EncoderDecoderModel"),
        "text2text-generation",
        "sentence-transformers/all-MiniLM-L6-v2",
    )
    .await;
}

/// SmolLM2 cut to its first two layers, fine-tuned at the smoke scale, as a LlamaForCausalLM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_smoke_decoder_loads_in_transformers_and_generates_what_p2m_predict_does() {
    run_package_and_compare(
        Some("decoder:layers=2"),
        ("AutoModelForCausalLM", "LlamaForCausalLM"),
        "text-generation",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    .await;
}

/// The laptop scale's student shape: the whole SmolLM2-135M (30 layers), fine-tuned on the smoke
/// scale's data (a few optimizer steps; the shape, not the training, is what is compared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_laptop_shape_decoder_loads_in_transformers_and_generates_what_p2m_predict_does()
{
    run_package_and_compare(
        Some("decoder"),
        ("AutoModelForCausalLM", "LlamaForCausalLM"),
        "text-generation",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    .await;
}
