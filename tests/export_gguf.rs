//! GGUF export of trained decoder students (`p2m export --gguf`) and llama.cpp as their decoding
//! engine (`p2m predict --engine llama-cpp`), checked against the student as trained: read back
//! with the project's GGUF reader, decoded by the llama.cpp compiled into p2m, and served by
//! llama-cpp-python's server.
//!
//! The student is SmolLM2-135M-Instruct cut to its first 2 layers (`decoder:layers=2`) and trained
//! for a few steps, so its weights are no longer the Q4_1 grid of the file it started from; the
//! inputs share a long instruction (~170 tokens), as a task's test set does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prompt2model::executor::ExecutorConfig;
use prompt2model::export::{self, GgufType};
use prompt2model::models::chat::{ChatMessage, ChatTemplate, GgufTokenizer};
use prompt2model::models::gguf::GgufFile;
use prompt2model::models::llama::{Llama, LlamaConfig, SteeredRow};
use prompt2model::models::llama_cpp::LlamaCppEngine;
use prompt2model::models::registry::ModelRegistry;
use prompt2model::models::sampling::SamplingConfig;
use prompt2model::pipeline::package::{ModelManifest, FORMAT, MANIFEST_FILE};
use prompt2model::trainer::{self, Student, StudentSpec, TrainConfig, Trainer};
use tch::Device;

use crate::common;

/// The instruction every input shares (the prefix the llama.cpp engine prefills once).
const INSTRUCTION: &str = "Decide whether the second event in the text happens before, after or \
during the first event. Read the whole text carefully: events may be described out of order, \
with pronouns that refer back to earlier sentences, and with time expressions such as yesterday, \
the following week, at the same time or shortly afterwards. Answer with exactly one word, \
before, after or during, and nothing else. If the text does not say, choose the answer that a \
careful reader would find most likely given ordinary knowledge of how such events unfold.";

const INPUTS: [&str; 12] = [
    "She finished the report and then went home.",
    "The match was cancelled after the storm flooded the pitch.",
    "While the bread baked, he cleaned the kitchen.",
    "They signed the contract a week before the launch.",
    "The museum reopened; earlier that year the roof had been repaired.",
    "He was reading when the phone rang.",
    "After the election, the new council met for the first time.",
    "The river froze in January and thawed in March.",
    "She trained for months before running the marathon.",
    "The lights went out during the concert.",
    "We ate dinner, then watched a film about 1984.",
    "The bridge collapsed two days after the inspection.",
];

/// New tokens per example in the comparisons (the executor's cap is 64; 24 keeps tests quick).
const MAX_NEW: usize = 24;

/// The trained student folder (with a `p2m.json`, as `p2m run` packages it) and the inputs as
/// JSONL, made once per test binary.
struct Fixture {
    _dir: tempfile::TempDir,
    model: PathBuf,
    inputs: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let registry = ModelRegistry::from_env().expect("data/models.toml loads");
        let spec: StudentSpec = "decoder:layers=2".parse().unwrap();
        let mut student = Student::build(&spec, &registry, Device::Cpu, 3).unwrap();
        // Trained to copy the input's first three words: answers that depend on the input.
        let rows: Vec<(String, String)> = INPUTS
            .iter()
            .map(|i| (i.to_string(), i.split(' ').take(3).collect::<Vec<_>>().join(" ")))
            .collect();
        let data = trainer::apply_template(0, INSTRUCTION, &rows);
        let cfg = TrainConfig {
            epochs: 8,
            batch_size: 4,
            learning_rate: 5e-4,
            max_source_len: 256,
            max_target_len: 8,
            seed: 3,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(cfg, &mut student, dir.path());
        t.progress = false;
        let summary = t.train(&data, &[]).unwrap();
        assert_eq!(summary.optimizer_steps, 24);
        let model = dir.path().join("final");
        let executor = ExecutorConfig { max_new_tokens: MAX_NEW, ..ExecutorConfig::default() };
        let manifest = ModelManifest {
            format: FORMAT.into(),
            name: "temporal-2-layer".into(),
            instruction: INSTRUCTION.into(),
            demonstrations: vec![],
            template: "<task {task_id}>{instruction}\nExample:\n{input}\nLabel:\n".into(),
            task_id: 0,
            executor,
            student: "decoder:layers=2".into(),
            metrics: vec![],
            created: "2026-01-01T00:00:00Z".into(),
        };
        std::fs::write(model.join(MANIFEST_FILE), serde_json::to_string(&manifest).unwrap())
            .unwrap();
        let inputs = dir.path().join("inputs.jsonl");
        let lines: Vec<String> =
            INPUTS.iter().map(|i| serde_json::json!({ "input": i }).to_string()).collect();
        std::fs::write(&inputs, lines.join("\n")).unwrap();
        Fixture { _dir: dir, model, inputs }
    })
}

/// Token ids of each input's prompt, as the executor builds them.
fn prompts(tokenizer: &tokenizers::Tokenizer) -> Vec<Vec<i64>> {
    INPUTS
        .iter()
        .map(|i| {
            let text = trainer::model_input(0, INSTRUCTION, i);
            tokenizer.encode(text, true).unwrap().get_ids().iter().map(|&t| t as i64).collect()
        })
        .collect()
}

fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Greedy generation with the executor's repetition penalty, one row per prompt (tch).
fn tch_greedy(model: &Llama, prompts: &[Vec<i64>]) -> Vec<Vec<i64>> {
    let cfg = SamplingConfig { repetition_penalty: 2.0, ..SamplingConfig::greedy(MAX_NEW) };
    let eos = model.config.eos_token_ids.clone();
    let pad = model.config.pad_token_id.unwrap_or(eos[0]);
    model.generate(prompts, &cfg, &eos, pad).unwrap().into_iter().map(|g| g.tokens).collect()
}

fn llama_cpp_greedy(engine: &LlamaCppEngine, prompts: &[Vec<i64>], eos: &[i64]) -> Vec<Vec<i64>> {
    let cfg = SamplingConfig { repetition_penalty: 2.0, ..SamplingConfig::greedy(MAX_NEW) };
    let rows: Vec<SteeredRow> =
        prompts.iter().map(|p| SteeredRow { prompt: p.clone(), generator: 0 }).collect();
    engine
        .generate_sharing_prefix(
            &rows,
            std::slice::from_ref(&cfg),
            &mut prompt2model::models::llama::stop_at_eos(eos),
        )
        .unwrap()
        .into_iter()
        .map(|g| g.tokens)
        .collect()
}

/// The `prediction` column of a file `p2m predict` wrote.
fn predictions(path: &Path) -> Vec<String> {
    use polars::prelude::SerReader;
    let frame =
        polars::prelude::ParquetReader::new(std::fs::File::open(path).unwrap()).finish().unwrap();
    prompt2model::data::loaders::string_column(&frame, "prediction").unwrap()
}

fn same_rows(a: &[Vec<i64>], b: &[Vec<i64>]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// f32: the exported file read back is the student, bit for bit (config, tokenizer, logits).
/// f16 and q8_0: the logits move by the rounding of the weights only.
#[test]
fn an_exported_student_reads_back_as_the_same_model() {
    let f = fixture();
    let out = tempfile::tempdir().unwrap();
    let original = Llama::load_hf_dir(&f.model, Device::Cpu).unwrap();
    let tokenizer = trainer::student::plain_tokenizer(&f.model.join("tokenizer.json")).unwrap();
    let ids = prompts(&tokenizer);
    let want = original.logits(&ids[0]).unwrap();
    let template = prompt2model::deploy::transformers::chat_template(0, INSTRUCTION, "", "");

    let path = out.path().join("f32.gguf");
    export::export_gguf(&f.model, GgufType::F32, Some(template.as_str()), "t", &path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let config = LlamaConfig::from_gguf(&g).unwrap();
    let saved = LlamaConfig::from_hf_json(&f.model.join("config.json")).unwrap();
    assert_eq!(config.num_hidden_layers, 2);
    assert_eq!(config.rms_norm_eps as f32, saved.rms_norm_eps as f32);
    assert_eq!(LlamaConfig { rms_norm_eps: saved.rms_norm_eps, ..config }, saved);
    let back = Llama::from_gguf(&g, Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&back.logits(&ids[0]).unwrap(), &want), 0.0, "f32 logits");

    // The tokenizer rebuilt from the file encodes as the student's tokenizer.json.
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    let rebuilt = GgufTokenizer::from_gguf(&g).unwrap();
    for text in [
        trainer::model_input(0, INSTRUCTION, INPUTS[10]),
        "Ünïcödé ½ 12345 <|im_start|>user\n  tabs\tand  spaces<|im_end|>".to_string(),
    ] {
        let ours: Vec<i64> = tokenizer
            .encode(text.as_str(), true)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&t| t as i64)
            .collect();
        assert_eq!(rebuilt.encode(&text, true).unwrap(), ours, "{text:?}");
    }
    // The chat template gives the training input for a user message.
    let jinja = ChatTemplate::new(g.get_str("tokenizer.chat_template").unwrap()).unwrap();
    let rendered =
        jinja.render(&[ChatMessage::user(INPUTS[3])], true, &Default::default()).unwrap();
    assert_eq!(rendered, trainer::model_input(0, INSTRUCTION, INPUTS[3]));

    // Half precision and 8-bit blocks: logits within the weights' rounding (the largest |Δ| over
    // all 49,152 logits at every position of a ~190-token prompt). Measured on this student: f16
    // 0.035, q8_0 0.725; greedy outputs (tch on both, 24 tokens) equal on 11/12 inputs for f16,
    // 4/12 for q8_0 (after the three copied words this student babbles, where choices are close).
    for (ty, tol, agree_min) in [(GgufType::F16, 0.25, 11), (GgufType::Q8_0, 1.0, 3)] {
        let path = out.path().join(format!("{ty}.gguf"));
        export::export_gguf(&f.model, ty, None, "t", &path).unwrap();
        let back = Llama::load_gguf(&path, Device::Cpu).unwrap();
        let diff = max_abs_diff(&back.logits(&ids[0]).unwrap(), &want);
        let agree = same_rows(&tch_greedy(&back, &ids), &tch_greedy(&original, &ids));
        eprintln!("{ty}: max |Δ logit| {diff:.4}; greedy outputs equal on {agree}/{} inputs (tch on both)", ids.len());
        assert!(diff > 0.0 && diff < tol, "{ty}: max |Δ logit| {diff}");
        assert!(agree >= agree_min, "{ty}: greedy outputs equal on {agree}/{}", ids.len());
    }
}

/// How many of the 12 inputs must decode to exactly the tch student's tokens (greedy, repetition
/// penalty 2, 24 tokens). f16, measured: 10/12, with the shared prefix or each prompt prefilled
/// whole (which give the same outputs on 12/12) — llama.cpp rounds the activations to f16 for the
/// f16 products where tch multiplies in f32, which moves the logits by hundredths (see the
/// read-back test: tch on the f16 weights itself agrees on 11/12), enough to flip the near-ties
/// of this student's babble after the words it copies. q8_0, measured: 2/12 (0/12 with each
/// prompt prefilled whole; the two agree on 4/12): 8-bit activations and weights move the logits
/// by tenths. The engine's cached copy is therefore f16, and libtorch stays the default engine.
const F16_AGREEMENT_MIN: usize = 10;
const Q8_AGREEMENT_MIN: usize = 2;

/// The llama.cpp compiled into p2m decodes the f16 export as `p2m predict` (tch) does, and
/// `p2m predict --engine llama-cpp` writes that copy once, under the weights' hash.
#[test]
fn llama_cpp_decodes_the_export_as_p2m_predict_does() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let original = Llama::load_hf_dir(&f.model, Device::Cpu).unwrap();
    let tokenizer = trainer::student::plain_tokenizer(&f.model.join("tokenizer.json")).unwrap();
    let ids = prompts(&tokenizer);
    let eos = original.config.eos_token_ids.clone();
    let want = tch_greedy(&original, &ids);
    let mut agree = vec![];
    for ty in [GgufType::F16, GgufType::Q8_0] {
        let path = work.path().join(format!("{ty}.gguf"));
        export::export_gguf(&f.model, ty, None, "t", &path).unwrap();
        let engine = LlamaCppEngine::load(&path, 1).unwrap();
        let shared = llama_cpp_greedy(&engine, &ids, &eos);
        // Each row alone (its whole prompt prefilled in one batch, not the prefix then the rest).
        let alone: Vec<Vec<i64>> = ids
            .iter()
            .map(|p| llama_cpp_greedy(&engine, std::slice::from_ref(p), &eos).remove(0))
            .collect();
        let (n, split) = (same_rows(&shared, &want), same_rows(&shared, &alone));
        eprintln!(
            "llama.cpp {ty}: {n}/{} inputs decode to the tch student's tokens ({} alone); the shared prefix leaves {split} unchanged",
            ids.len(),
            same_rows(&alone, &want)
        );
        agree.push((n, split));
    }
    // f16: as tch's but for near-ties, and prefilling the prefix apart changes no output.
    assert!(
        agree[0].0 >= F16_AGREEMENT_MIN && agree[0].1 == ids.len(),
        "f16: (equal to tch, unchanged by the split) {:?}",
        agree[0]
    );
    assert!(agree[1].0 >= Q8_AGREEMENT_MIN, "q8_0: {}/{} equal to tch", agree[1].0, ids.len());

    // The same through the command line, and the engine's copy is made once per weights.
    let cache = work.path().join("cache");
    let predict = |engine: &str, out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_p2m"));
        c.current_dir(common::repo_root())
            .env("P2M_CACHE", &cache)
            .env("OMP_NUM_THREADS", "1")
            .args(["predict", "--cpu", "--engine", engine, "--model"])
            .arg(&f.model)
            .arg("--input")
            .arg(&f.inputs)
            .arg("--out")
            .arg(out);
        common::output_ok(c.output().unwrap());
        predictions(out)
    };
    let tch = predict("tch", &work.path().join("tch.parquet"));
    let cpp = predict("llama-cpp", &work.path().join("cpp.parquet"));
    let copies = || std::fs::read_dir(cache.join("student-gguf")).unwrap().count();
    assert_eq!(copies(), 1);
    let again = predict("llama-cpp", &work.path().join("cpp2.parquet"));
    assert_eq!((copies(), &again), (1, &cpp), "the cached copy is reused");
    let same = tch.iter().zip(&cpp).filter(|(a, b)| a == b).count();
    eprintln!("p2m predict: llama-cpp equals tch on {same}/{} inputs", tch.len());
    assert!(same >= F16_AGREEMENT_MIN, "{same}/{}: tch {tch:?}\nllama-cpp {cpp:?}", tch.len());

    // Other weights (here: another config) are another copy, never the stale one.
    let edited = work.path().join("edited");
    std::fs::create_dir(&edited).unwrap();
    for e in std::fs::read_dir(&f.model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, edited.join(p.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(edited.join("config.json")).unwrap();
    std::fs::write(
        edited.join("config.json"),
        config.replace("\"rope_theta\": 100000.0", "\"rope_theta\": 10000.0"),
    )
    .unwrap();
    let a = export::engine_gguf(&f.model, &cache).unwrap();
    let b = export::engine_gguf(&edited, &cache).unwrap();
    assert_ne!(a, b);
    assert_eq!(copies(), 2);
}

/// `p2m export --gguf` writes model.gguf and a Modelfile; llama-cpp-python's OpenAI server loads
/// the file and answers greedy completions (and chat completions through the exported template)
/// as `p2m predict` does at repetition penalty 1 (the server's penalty sees the generated tokens
/// only, the executor's the prompt too). Measured: completions and chat 3/4 — the fourth differs in
/// detokenisation only (the same tokens end in an incomplete UTF-8 sequence, which `p2m predict`
/// writes as U+FFFD and llama-cpp-python drops); continuations of the bare inputs 4/4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_pythons_server_serves_the_export() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("gguf");
    let export = Command::new(env!("CARGO_BIN_EXE_p2m"))
        .current_dir(common::repo_root())
        .args(["export", "--gguf", "--type", "f16", "--out"])
        .arg(&out_dir)
        .arg(&f.model)
        .output()
        .unwrap();
    let text = common::output_ok(export);
    assert!(text.contains("model.gguf"), "{text}");
    let modelfile = std::fs::read_to_string(out_dir.join("Modelfile")).unwrap();
    assert!(
        modelfile.contains("FROM ./model.gguf")
            && modelfile.contains("PARAMETER stop \"<|im_end|>\""),
        "{modelfile}"
    );

    let preds = work.path().join("p.parquet");
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2m"));
    c.current_dir(common::repo_root())
        .env("OMP_NUM_THREADS", "1")
        .args(["predict", "--cpu", "--repetition-penalty", "1.0", "--model"])
        .arg(&f.model)
        .arg("--input")
        .arg(&f.inputs)
        .arg("--out")
        .arg(&preds);
    common::output_ok(c.output().unwrap());
    let want = predictions(&preds);

    // The tch student's greedy continuations of the bare inputs (repetition penalty 1).
    let continuations: Vec<String> = {
        let model = Llama::load_hf_dir(&f.model, Device::Cpu).unwrap();
        let tokenizer = trainer::student::plain_tokenizer(&f.model.join("tokenizer.json")).unwrap();
        let eos = model.config.eos_token_ids.clone();
        INPUTS
            .iter()
            .map(|input| {
                let ids: Vec<i64> = tokenizer
                    .encode(*input, true)
                    .unwrap()
                    .get_ids()
                    .iter()
                    .map(|&t| t as i64)
                    .collect();
                let g =
                    model.generate(&[ids], &SamplingConfig::greedy(MAX_NEW), &eos, eos[0]).unwrap();
                let out: Vec<u32> =
                    g[0].tokens.iter().filter(|t| !eos.contains(t)).map(|&t| t as u32).collect();
                tokenizer.decode(&out, true).unwrap().trim().to_string()
            })
            .collect()
    };
    let script = common::repo_root().join("scripts/llama-server.sh");
    let py = Command::new("bash").arg(&script).arg("python").output().unwrap();
    assert!(
        py.status.success(),
        "installing llama-cpp-python failed:\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let python = String::from_utf8(py.stdout).unwrap().trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = work.path().join("server.log");
    let mut child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(out_dir.join("model.gguf"))
        .args([
            "--n_ctx",
            "1024",
            "--n_threads",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let root = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            panic!(
                "the server exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let up =
            client.get(format!("{root}/v1/models")).timeout(Duration::from_secs(2)).send().await;
        if up.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server did not come up:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sampling = serde_json::json!({"max_tokens": MAX_NEW, "temperature": 0.0, "repeat_penalty": 1.0, "top_k": 1});
    let post = |path: &str, extra: serde_json::Value| {
        let mut body = sampling.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let request = client.post(format!("{root}{path}")).json(&body).send();
        async move { request.await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let text_of = |r: &serde_json::Value, pointer: &str| {
        r.pointer(pointer)
            .and_then(|t| t.as_str())
            .unwrap_or_else(|| panic!("{r}"))
            .trim()
            .to_string()
    };
    let n = 4;
    let (mut same_completion, mut same_chat, mut same_raw) = (0, 0, 0);
    for (i, input) in INPUTS.iter().take(n).enumerate() {
        let prompt = trainer::model_input(0, INSTRUCTION, input);
        let r = post("/v1/completions", serde_json::json!({ "prompt": prompt })).await;
        let completion = text_of(&r, "/choices/0/text");
        let r = post(
            "/v1/chat/completions",
            serde_json::json!({"messages": [{"role": "user", "content": input}]}),
        )
        .await;
        let chat = text_of(&r, "/choices/0/message/content");
        // The input alone, continued: outputs that differ from input to input (this small
        // student's answers after the shared template are alike), against the tch student's.
        let r = post("/v1/completions", serde_json::json!({ "prompt": input })).await;
        let raw = text_of(&r, "/choices/0/text");
        eprintln!(
            "input {i}: p2m {:?} | server completion {completion:?} | chat {chat:?} | continuation {raw:?} (tch {:?})",
            want[i], continuations[i]
        );
        same_completion += usize::from(completion == want[i]);
        same_chat += usize::from(chat == want[i]);
        same_raw += usize::from(raw == continuations[i]);
    }
    drop(guard);
    eprintln!("llama-cpp-python server: completions equal p2m predict on {same_completion}/{n}, chat on {same_chat}/{n}; continuations equal tch's on {same_raw}/{n}");
    assert!(
        same_completion >= n - 1 && same_chat >= n - 1 && same_raw >= n - 1,
        "completions {same_completion}/{n}, chat {same_chat}/{n}, continuations {same_raw}/{n}"
    );
    let distinct: std::collections::HashSet<&String> = continuations.iter().take(n).collect();
    assert!(distinct.len() > 1, "the continuations should differ by input: {continuations:?}");
}
