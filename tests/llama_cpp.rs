//! The llama.cpp decoding engine (`DecodingEngine::LlamaCpp`, feature `llama-cpp`): greedy
//! choices that are llama-cpp-python's on the same GGUF, rows independent of their batch, the structured
//! generation protocol, and `p2m chat --engine llama-cpp` as a user runs it.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use prompt2model::models::chat::{ChatMessage, ChatModel, DecodingEngine};
use prompt2model::models::sampling::SamplingConfig;
use tch::Device;

use crate::common;
use crate::models_llama::gguf_path;

/// The chat model on the llama.cpp engine, loaded once per test binary.
fn llama_cpp_model() -> MutexGuard<'static, ChatModel> {
    static MODEL: OnceLock<Mutex<ChatModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let mut m = ChatModel::load(&gguf_path(), Device::Cpu).unwrap();
            m.set_engine(DecodingEngine::LlamaCpp).unwrap();
            assert_eq!(m.engine(), DecodingEngine::LlamaCpp);
            Mutex::new(m)
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn prompt_ids(model: &ChatModel, question: &str) -> Vec<i64> {
    model.chat_prompt_ids(&[ChatMessage::user(question)]).unwrap()
}

/// How far from llama-cpp-python's greedy choice each of our tokens is: `prompt ++ ours` is run
/// through llama-cpp-python (the reference binding, installed or reused by
/// `scripts/llama-server.sh`) on the same file, and for every generated position it returns the
/// reference's argmax and `max logit − logit[ours]` (0 where we picked its argmax).
fn llama_cpp_python_margins(prompts: &[Vec<i64>], ours: &[Vec<i64>]) -> Vec<Vec<(i64, f64)>> {
    let script = common::repo_root().join("scripts/llama-server.sh");
    let out = Command::new("bash").arg(&script).arg("python").output().unwrap();
    assert!(
        out.status.success(),
        "installing llama-cpp-python (scripts/llama-server.sh python) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let program = r#"
import json, sys
import numpy as np
from llama_cpp import Llama
args = json.load(sys.stdin)
llm = Llama(model_path=args["model"], n_ctx=1024, n_threads=1, n_threads_batch=1,
            logits_all=True, verbose=False)
outs = []
for prompt, ours in zip(args["prompts"], args["ours"]):
    # The prompt in one batch, then one token per call: the kernels a generation loop runs.
    llm.reset()
    llm.eval(prompt)
    rows = []
    for t in ours:
        logits = np.array(llm.scores[llm.n_tokens - 1])
        best = int(np.argmax(logits))
        rows.append([best, float(logits[best] - logits[t])])
        llm.eval([t])
    outs.append(rows)
print(json.dumps(outs))
"#;
    let input = serde_json::json!({ "model": gguf_path(), "prompts": prompts, "ours": ours });
    let mut child = Command::new(&python)
        .args(["-c", program])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "llama-cpp-python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Largest `max logit − logit[our token]` allowed under llama-cpp-python's logits: our greedy
/// choice must be its argmax or a near-tie with it. Not zero because the two builds of llama.cpp
/// differ: llama-cpp-python's wheel is compiled for this CPU (AVX-512) with flash attention off,
/// llama-cpp-sys-2 for x86-64 with AVX2 (it turns `GGML_NATIVE` off unless Rust builds with
/// `target-cpu=native`) with llama.cpp's default (`auto`: on), so sums round in another order and
/// the logits move by tenths. Measured: 0.178 over 3 prompts (63 tokens); wrong positions or
/// caches give margins of whole logits.
const GREEDY_MARGIN_TOL: f64 = 0.5;
/// Fewest of our greedy tokens that must be exactly the reference's argmax. Measured: 59 of 63.
const GREEDY_AGREEMENT_MIN: f64 = 0.75;

#[test]
fn greedy_decoding_on_llama_cpp_picks_llama_cpp_pythons_argmax_at_every_step() {
    let model = llama_cpp_model();
    let prompts = vec![
        prompt_ids(&model, "Describe Paris in three sentences."),
        prompt_ids(&model, "Write a haiku about the sea."),
    ];
    let ours: Vec<Vec<i64>> = model
        .generate_ids(&prompts, &SamplingConfig::greedy(40))
        .unwrap()
        .into_iter()
        .map(|mut g| {
            if g.stopped_on_eos {
                g.tokens.pop(); // the EOS that ended the row
            }
            g.tokens
        })
        .collect();
    let margins = llama_cpp_python_margins(&prompts, &ours);
    let mut worst = 0.0f64;
    let mut agree = 0usize;
    for (i, (o, m)) in ours.iter().zip(&margins).enumerate() {
        assert!(o.len() >= 8, "prompt {i}: only {} tokens", o.len());
        for (j, (&t, &(best, margin))) in o.iter().zip(m).enumerate() {
            assert!(
                margin <= GREEDY_MARGIN_TOL,
                "prompt {i}, token {j}: ours {t}, llama-cpp-python's argmax {best} by {margin}"
            );
            worst = worst.max(margin);
            agree += usize::from(t == best);
        }
    }
    let total = ours.iter().map(Vec::len).sum::<usize>();
    eprintln!("greedy margins: worst {worst:.4}, {agree} of {total} tokens the reference's argmax");
    assert!(
        agree as f64 >= GREEDY_AGREEMENT_MIN * total as f64,
        "only {agree} of {total} greedy tokens are llama-cpp-python's argmax"
    );
}

#[test]
fn a_row_decodes_the_same_alone_and_in_a_batch_on_llama_cpp() {
    let model = llama_cpp_model();
    let prompts = vec![
        prompt_ids(&model, "Name three colours."),
        prompt_ids(&model, "Explain in two sentences why the sky looks blue during the day."),
        prompt_ids(&model, "Name three colours."),
    ];
    let cfg = SamplingConfig::greedy(24);
    let batch = model.generate_ids(&prompts, &cfg).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = model.generate_ids(std::slice::from_ref(p), &cfg).unwrap().remove(0);
        assert_eq!(batch[i].tokens, alone.tokens, "row {i}");
        assert!(!alone.tokens.is_empty());
    }
    // Sampling draws from the seeded generator as the libtorch engine does: same seed, same text.
    let sampled = SamplingConfig { temperature: 0.9, top_p: 0.95, seed: 7, ..cfg };
    let a = model.generate_ids(&prompts[..2], &sampled).unwrap();
    let b = model.generate_ids(&prompts[..2], &sampled).unwrap();
    assert_eq!(a[0].tokens, b[0].tokens);
    assert_eq!(a[1].tokens, b[1].tokens);
}

#[test]
fn structured_generation_runs_on_llama_cpp() {
    let model = llama_cpp_model();
    let request = prompt2model::models::chat::JsonRequest {
        messages: vec![ChatMessage::user(
            "Give an example question about geography and its answer.",
        )],
        n: 2,
        sampling: SamplingConfig {
            temperature: 0.7,
            top_p: 0.9,
            seed: 3,
            ..SamplingConfig::greedy(48)
        },
    };
    let fields = ["input".to_string(), "output".to_string()];
    let replies = model.chat_json_requests(&[request], &fields).unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].len(), 2, "n = 2 choices");
    for c in &replies[0] {
        let v: serde_json::Value =
            serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", c.text));
        assert!(v.get("input").is_some() && v.get("output").is_some(), "{}", c.text);
    }
}

#[test]
fn p2m_chat_runs_on_llama_cpp_and_refuses_a_precision_it_does_not_use() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_p2m"))
            .args(args)
            .current_dir(common::repo_root())
            .output()
            .unwrap()
    };
    let out =
        run(&["chat", "--prompt", "Say hello.", "--max-new-tokens", "16", "--engine", "llama-cpp"]);
    let text = common::output_ok(out);
    assert!(!text.trim().is_empty(), "no reply");
    let out = run(&["chat", "--prompt", "Hi", "--engine", "llama-cpp", "--precision", "bf16"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--precision bf16") && err.contains("--engine libtorch"), "{err}");
    let out = run(&["chat", "--prompt", "Hi", "--engine", "vulkan"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("libtorch` or `llama-cpp"));
}
