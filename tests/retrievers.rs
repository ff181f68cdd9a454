//! The model and dataset retrievers: BM25 against rank_bm25, the full offline indices, HyDE with
//! the OpenAI-compatible backend (loopback fake server) and the local teacher, LLM reranking and
//! column selection, textualisation, and bad indices.

use crate::common;
use crate::fake_openai;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prompt2model::dataset_retriever::{self as dr, ColumnChoice, DatasetIndex, DatasetRetriever};
use prompt2model::model_retriever::{
    self as mr, Architecture, IndexSource, ModelIndex, ModelRetrieverConfig,
};
use prompt2model::retrieval::bm25::{Bm25Index, Bm25Params, Idf};
use prompt2model::retrieval::text::Analyzer;
use prompt2model::teacher::{OpenAiConfig, OpenAiTeacher};

fn task_instruction(task: &str) -> String {
    let paths = prompt2model::config::Paths::with(
        &common::repo_root(),
        Some(common::mirror()),
        PathBuf::from("/nonexistent"),
        true,
    );
    let tasks = prompt2model::data::tasks::load_tasks(&paths.data).unwrap();
    prompt2model::data::tasks::find(&tasks, task).unwrap().instruction.trim().to_string()
}

fn squad_instruction() -> String {
    task_instruction("squad")
}

/// A gzip'd tar of `(member, bytes)` files, as model_info.tar.gz is laid out.
fn tar_gz(path: &Path, files: &[(&str, &[u8])]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("model_info/{name}"), *bytes).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

fn card(name: &str, description: &str, size: &str, downloads: u64) -> Vec<u8> {
    serde_json::json!({"pretrained_model_name": name, "description": description, "size_bytes": size, "downloads": downloads}).to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// BM25

#[test]
fn bm25_matches_rank_bm25_scores() {
    // Written by scripts/parity/make_bm25_fixtures.py with rank_bm25 0.2.2 (BM25Okapi).
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/bm25_rank_bm25.json")).unwrap();
    let docs: Vec<Vec<String>> = serde_json::from_value(fixture["docs"].clone()).unwrap();
    let queries: Vec<Vec<String>> = serde_json::from_value(fixture["queries"].clone()).unwrap();
    let index = Bm25Index::build(&docs);
    let mut compared = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let params = Bm25Params {
            k1: case["k1"].as_f64().unwrap(),
            b: case["b"].as_f64().unwrap(),
            idf: Idf::OkapiEpsilon(case["epsilon"].as_f64().unwrap()),
        };
        for (q, want) in queries.iter().zip(case["scores"].as_array().unwrap()) {
            let got = index.scores(q, &params);
            let want: Vec<f64> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(got.len(), want.len());
            for (d, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "k1 {} query {q:?} doc {d}: {g} vs rank_bm25 {w}",
                    params.k1
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 3 * 14 * 60);
}

// ---------------------------------------------------------------------------------------------
// The model retriever on the full index

#[test]
fn model_retriever_full_index_offline() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let source = IndexSource::from_registry(&registry).unwrap();
    let (index, rebuilt) = ModelIndex::load_or_build(&source, cache.path(), false).unwrap();
    assert!(rebuilt);
    assert_eq!(index.stats.files, 11_929);
    assert_eq!(index.stats.empty, 609, "empty cards are skipped as the reference skips them");
    assert_eq!(index.stats.indexed as usize, index.cards.len());
    assert_eq!(index.cards.len(), 11_320);

    let cfg = ModelRetrieverConfig::default();
    let ranking = index.rank(&squad_instruction(), &cfg, Some(5));
    assert_eq!(ranking.models.len(), 5);
    // A person would pick flan-t5-base for SQuAD (the paper's retrieved model): it ranks first.
    assert_eq!(ranking.models[0].name, "google/flan-t5-base");
    for m in &ranking.models {
        assert_eq!(m.architecture, Architecture::EncoderDecoder);
        assert!(m.size_bytes <= 3_000_000_000);
        assert!(!m.matched_terms.is_empty(), "{} has reasons", m.name);
        let expect = m.bm25 * (m.downloads as f64 + 2.0).log10();
        assert!((m.score - expect).abs() < 1e-9);
    }
    assert!(ranking.models.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(ranking.removed_by_size > 0 && ranking.removed_by_architecture > 0);

    // Limits are removals: a 500 MB limit leaves only smaller models; decoder-only models are allowed by a flag.
    let small = ModelRetrieverConfig {
        size_limit_bytes: mr::parse_size("500MB").unwrap(),
        ..Default::default()
    };
    let r = index.rank(&squad_instruction(), &small, Some(20));
    assert!(r.models.iter().all(|m| m.size_bytes <= 500_000_000));
    assert!(r.removed_by_size > ranking.removed_by_size);
    let dec = ModelRetrieverConfig { allow_decoder_only: true, ..Default::default() };
    assert!(index
        .rank("generate text with gpt2", &dec, None)
        .models
        .iter()
        .any(|m| m.architecture == Architecture::DecoderOnly));
    assert!(index
        .rank("generate text with gpt2", &cfg, None)
        .models
        .iter()
        .all(|m| m.architecture == Architecture::EncoderDecoder));

    // The paper's formula (offset 1) is a setting.
    let paper = ModelRetrieverConfig { downloads_offset: 1.0, ..Default::default() };
    let r1 = index.rank(&squad_instruction(), &paper, Some(1));
    assert!(
        (r1.models[0].score - r1.models[0].bm25 * (r1.models[0].downloads as f64 + 1.0).log10())
            .abs()
            < 1e-9
    );

    // Beside the index, the students that train here (data/models.toml [model.student]),
    // decoder-only included. Offline the hub's seq2seq models have no weights, so the walk down
    // the merged ranking passes each over, with its reason, and takes the best-ranked student.
    let models = models_registry(cache.path());
    let students = mr::local_students(&models);
    let specs: Vec<&str> = students.iter().map(|s| s.spec.as_str()).collect();
    assert_eq!(specs, ["warm-start", "decoder"]);
    let merged = index.rank_with_students(&squad_instruction(), &cfg, Some(5), &students);
    assert_eq!(merged.len(), 7, "5 hub models + 2 students");
    assert!(merged.windows(2).all(|w| w[0].score >= w[1].score));
    let decoder = merged.iter().find(|c| c.name == "SmolLM2-135M-Instruct-Q4_1").unwrap();
    assert_eq!(decoder.architecture, Architecture::DecoderOnly);
    let mut no_network = |p: &mr::TrainablePlan| -> anyhow::Result<String> {
        anyhow::bail!("offline: `{}` is not fetched", p.retrieved)
    };
    let choice = mr::choose_trainable(&merged, &models, true, &mut no_network);
    // SQuAD: the MiniLM card (trained on question-answer pairs) outscores SmolLM2's.
    assert_eq!(
        (choice.name.as_deref(), choice.student.as_deref()),
        (Some("all-MiniLM-L6-v2"), Some("warm-start"))
    );
    assert_eq!(choice.passed_over.len(), choice.rank.unwrap() - 1);
    assert!(choice.passed_over.iter().all(|(_, why)| why.contains("no weights here")));
    // MCoNaLa's Japanese instruction shares no term with either (English) student card: nothing
    // trains here, and the pipeline falls back to the scale's default.
    let ja = index.rank_with_students(&task_instruction("mconala"), &cfg, Some(5), &students);
    assert!(ja.iter().all(|c| c.source == mr::CandidateSource::Hub));
    assert_eq!(mr::choose_trainable(&ja, &models, true, &mut no_network).student, None);

    // Second open: the cached index, same answers.
    let (again, rebuilt) = ModelIndex::load_or_build(&source, cache.path(), false).unwrap();
    assert!(!rebuilt);
    let r2 = again.rank(&squad_instruction(), &cfg, Some(5));
    assert_eq!(
        r2.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
        ranking.models.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
}

#[test]
fn model_index_rebuilds_only_when_the_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cards = dir.path().join("cards");
    std::fs::create_dir(&cards).unwrap();
    std::fs::write(cards.join("a.json"), card("org/t5-qa", "question answering model", "1000", 5))
        .unwrap();
    std::fs::write(cards.join("b.json"), card("org/bart-sum", "summarization of news", "1000", 50))
        .unwrap();
    let cache = dir.path().join("cache");
    let (_, rebuilt) =
        ModelIndex::load_or_build(&IndexSource::from_path(&cards).unwrap(), &cache, false).unwrap();
    assert!(rebuilt);
    let (_, rebuilt) =
        ModelIndex::load_or_build(&IndexSource::from_path(&cards).unwrap(), &cache, false).unwrap();
    assert!(!rebuilt, "same source: cached");
    std::fs::write(
        cards.join("c.json"),
        card("org/t5-translate", "translation english german", "1000", 7),
    )
    .unwrap();
    let (index, rebuilt) =
        ModelIndex::load_or_build(&IndexSource::from_path(&cards).unwrap(), &cache, false).unwrap();
    assert!(rebuilt, "a new card changes the source hash");
    assert_eq!(index.cards.len(), 3);
    // A corrupt cache file is rebuilt, not trusted.
    std::fs::write(cache.join("retrieval/model_index.bin"), b"garbage").unwrap();
    let (index, rebuilt) =
        ModelIndex::load_or_build(&IndexSource::from_path(&cards).unwrap(), &cache, false).unwrap();
    assert!(rebuilt);
    assert_eq!(
        index.rank("translate german", &ModelRetrieverConfig::default(), None).models[0].name,
        "org/t5-translate"
    );
}

#[test]
fn tiny_reference_fixture_ranks_like_the_reference() {
    // The reference's test cards: t5-base (encoder-decoder), gpt2, xlnet; sizes are strings.
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let t5 =
        registry.resolve_file("prompt2model/test_helpers/model_info_tiny/t5-base.json").unwrap();
    let dir = t5.local.parent().unwrap();
    let index = ModelIndex::build(&IndexSource::from_path(dir).unwrap(), false).unwrap();
    assert_eq!(index.cards.len(), 3);
    let r = index.rank("text generator model", &ModelRetrieverConfig::default(), None);
    assert_eq!(
        r.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        ["t5-base"],
        "gpt2 and xlnet are not encoder-decoders"
    );
    let all = ModelRetrieverConfig { allow_decoder_only: true, ..Default::default() };
    let names: Vec<String> = index
        .rank("autoregressive language model", &all, None)
        .models
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["gpt2"], "xlnet is encoder-only");
}

// ---------------------------------------------------------------------------------------------
// Bad indices

#[test]
fn bad_model_indices_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let missing = IndexSource::from_path(&dir.path().join("nope.tar.gz")).unwrap_err().to_string();
    assert!(
        missing.contains("nope.tar.gz")
            && missing.contains("does not exist")
            && missing.contains("fix:"),
        "{missing}"
    );

    // Truncated: the first 200 KB of the real archive.
    let real = common::mirror().join("prompt2model/model_info.tar.gz");
    let bytes = std::fs::read(real).unwrap();
    let cut = dir.path().join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..200_000]).unwrap();
    let err = ModelIndex::load_or_build(&IndexSource::from_path(&cut).unwrap(), &cache, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cut.tar.gz")
            && err.contains("not a complete gzip-compressed tar archive")
            && err.contains("fix:"),
        "{err}"
    );

    // Not gzip at all.
    let plain = dir.path().join("plain.tar.gz");
    std::fs::write(&plain, b"{\"pretrained_model_name\": \"x\"}").unwrap();
    let err = ModelIndex::build(&IndexSource::from_path(&plain).unwrap(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("plain.tar.gz") && err.contains("gzip"), "{err}");

    // One malformed card among good ones: the error names the member, line and column.
    let bad = dir.path().join("bad.tar.gz");
    tar_gz(
        &bad,
        &[
            ("good.json", &card("org/t5", "text", "10", 1)),
            ("broken.json", b"{\"pretrained_model_name\": \"x\", \"description\": "),
        ],
    );
    let err =
        ModelIndex::build(&IndexSource::from_path(&bad).unwrap(), false).err().unwrap().to_string();
    assert!(
        err.contains("bad.tar.gz")
            && err.contains("model_info/broken.json")
            && err.contains("not valid JSON at line 1"),
        "{err}"
    );
    let err = ModelIndex::build(
        &IndexSource::from_path(&{
            let p = dir.path().join("noname.tar.gz");
            tar_gz(&p, &[("x.json", b"{\"description\": \"d\", \"size_bytes\": 1}")]);
            p
        })
        .unwrap(),
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("model_info/x.json") && err.contains("pretrained_model_name"), "{err}");

    // Nothing usable: an error, never an empty ranking.
    let empty = dir.path().join("empty.tar.gz");
    tar_gz(
        &empty,
        &[
            ("a.json", b""),
            ("b.json", b"  \n"),
            ("c.json", &card("huggingtweets/someone", "tweets", "10", 1)),
        ],
    );
    let err = ModelIndex::build(&IndexSource::from_path(&empty).unwrap(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("empty.tar.gz")
            && err.contains("no usable model card (3 files: 2 empty")
            && err.contains("1 blocklisted"),
        "{err}"
    );
    let nothing = dir.path().join("nothing.tar.gz");
    tar_gz(&nothing, &[]);
    assert!(ModelIndex::build(&IndexSource::from_path(&nothing).unwrap(), false)
        .err()
        .unwrap()
        .to_string()
        .contains("no usable model card (0 files"));
}

#[test]
fn bad_dataset_indices_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = DatasetIndex::load(&dir.path().join("none.json"), None).err().unwrap().to_string();
    assert!(
        err.contains("none.json") && err.contains("does not exist") && err.contains("fix:"),
        "{err}"
    );
    let real = std::fs::read(common::mirror().join("prompt2model/dataset_index.json")).unwrap();
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, &real[..5000]).unwrap();
    let err = DatasetIndex::load(&cut, None).err().unwrap().to_string();
    assert!(
        err.contains("cut.json")
            && err.contains("not valid JSON at line")
            && err.contains("re-fetch"),
        "{err}"
    );
    let nodesc = dir.path().join("nodesc.json");
    std::fs::write(&nodesc, br#"{"squad": {"name": "squad", "evaluation_metadata": []}}"#).unwrap();
    let err = DatasetIndex::load(&nodesc, None).err().unwrap().to_string();
    assert!(err.contains("entry `squad`: field `description`"), "{err}");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, b"{}").unwrap();
    assert!(DatasetIndex::load(&empty, None).err().unwrap().to_string().contains("no datasets"));
    std::fs::write(&empty, b"[1, 2]").unwrap();
    assert!(DatasetIndex::load(&empty, None)
        .err()
        .unwrap()
        .to_string()
        .contains("not a JSON object"));
}

// ---------------------------------------------------------------------------------------------
// HyDE

fn fake_client(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_string(),
        model: "fake-gpt".into(),
        backend_name: "fake".into(),
        api_key_env: "P2M_TEST_NO_SUCH_KEY".into(),
        require_api_key: Some(false),
        request_timeout_secs: 5.0,
        max_retries: 3,
        backoff_base_ms: 20,
        backoff_max_ms: 200,
        ..Default::default()
    }
}

#[tokio::test]
async fn hyde_with_an_openai_compatible_server() {
    let server = fake_openai::FakeServer::start(fake_openai::ServerConfig {
        faults: vec![fake_openai::Fault::Status503],
        fault_period: 1,
        max_faults_per_request: 1,
        lifetime: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let teacher = OpenAiTeacher::new(fake_client(&server.base_url)).unwrap();
    let card = mr::hyde_query(&teacher, "Answer a question from a context passage.").await.unwrap();
    assert!(card.starts_with("---") && card.contains("question answering"), "{card}");
    assert_eq!(server.state.request_count(), 2, "one retried 503, then the card");

    // The card is the query: over the reference's tiny cards it finds the T5 model.
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let t5 =
        registry.resolve_file("prompt2model/test_helpers/model_info_tiny/t5-base.json").unwrap();
    let index =
        ModelIndex::build(&IndexSource::from_path(t5.local.parent().unwrap()).unwrap(), false)
            .unwrap();
    let ranking = index.rank(&card, &ModelRetrieverConfig::default(), None);
    assert_eq!(ranking.query, card);
    assert_eq!(ranking.models[0].name, "t5-base");
}

#[tokio::test]
async fn hyde_with_the_local_teacher() {
    // SmolLM2-135M, greedy; a short card keeps the test fast on CPU.
    let teacher = prompt2model::teacher::local::LocalTeacher::offline_default(
        None,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let card =
        mr::hyde_query_with(&teacher, "Translate English news into German.", 24).await.unwrap();
    assert!(!card.trim().is_empty());
    let again =
        mr::hyde_query_with(&teacher, "Translate English news into German.", 24).await.unwrap();
    assert_eq!(card, again, "temperature 0 is deterministic");
    let terms = Analyzer::new().analyze(&card);
    assert!(!terms.is_empty(), "the card has index terms: {card:?}");
}

// ---------------------------------------------------------------------------------------------
// The dataset retriever

fn models_registry(cache: &Path) -> prompt2model::models::registry::ModelRegistry {
    // The offline encoder comes from the project cache (its wheel); keep it shared across tests.
    let project = prompt2model::config::Paths::from_env().unwrap();
    let paths = prompt2model::config::Paths::with(
        &common::repo_root(),
        Some(common::mirror()),
        project.cache.clone(),
        true,
    );
    let _ = cache;
    prompt2model::models::registry::ModelRegistry::load(paths).unwrap()
}

#[test]
fn dataset_index_full_parses_and_marks_loadable_local_datasets() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let (index, _) = DatasetIndex::from_registry(&registry).unwrap();
    assert_eq!(index.entries.len(), 2_494);
    assert!(
        index.entries.windows(2).all(|w| w[0].name < w[1].name),
        "name order, as the reference"
    );
    let local = dr::local_sources(&registry);
    let loadable: Vec<&str> =
        local.iter().filter(|(_, l)| l.loadable).map(|(n, _)| n.as_str()).collect();
    assert_eq!(loadable, ["neulab/conala", "neulab/mconala", "nq_open", "squad"]);
    assert!(!local["cbt"].loadable, "only the dummy zips of cbt are here");
    for name in local.keys() {
        assert!(
            index.entries.iter().any(|e| &e.name == name),
            "`{name}` of data/datasets.toml is an index name"
        );
    }
}

#[test]
fn dataset_retriever_tiny_index_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(dir.path());
    let tiny = registry.resolve_file("prompt2model/test_helpers/dataset_index_tiny.json").unwrap();
    let index = DatasetIndex::load(&tiny.local, None).unwrap();
    assert_eq!(
        index.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["search_qa", "squad", "trivia_qa"]
    );
    let models = models_registry(dir.path());
    let cache = dir.path().join("cache");
    let encoder = dr::Encoder::from_registry(&models, dr::DEFAULT_ENCODER).unwrap();
    let local = dr::local_sources(&registry);
    let retriever = DatasetRetriever::new(index, encoder, local.clone(), &cache, false).unwrap();
    assert!(retriever.encoded_now);
    let top = retriever.retrieve(&squad_instruction(), None).unwrap();
    assert_eq!(top.len(), 3);
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    let squad = top.iter().find(|c| c.name == "squad").unwrap();
    assert!(squad.loadable() && top.iter().filter(|c| c.loadable()).count() == 1);
    // Normalised embeddings: scores are cosines.
    assert!(top.iter().all(|c| c.score <= 1.0 + 1e-5 && c.score >= -1.0 - 1e-5));

    // Re-opened: the cached matrix, identical scores.
    let index = DatasetIndex::load(&tiny.local, None).unwrap();
    let encoder = dr::Encoder::from_registry(&models, dr::DEFAULT_ENCODER).unwrap();
    let again = DatasetRetriever::new(index, encoder, local, &cache, false).unwrap();
    assert!(!again.encoded_now);
    let top2 = again.retrieve(&squad_instruction(), None).unwrap();
    for (a, b) in top.iter().zip(&top2) {
        assert_eq!(a.name, b.name);
        assert!((a.score - b.score).abs() < 1e-6);
    }

    // Textualise SQuAD with chosen columns, capped.
    let (splits, inputs) =
        dr::load_raw(&registry, &squad.local.as_ref().unwrap().registry_id).unwrap();
    assert_eq!(splits[0].column_names(), ["title", "context", "question", "answers"]);
    let choice =
        ColumnChoice { input: vec!["context".into(), "question".into()], output: "answers".into() };
    let out = dir.path().join("out");
    let saved =
        dr::save(&out, "squad", "squad-v1.1-dev", &splits, &choice, 50, "test", inputs).unwrap();
    assert_eq!(saved.splits["validation"], 50);
    use polars::prelude::SerReader;
    let df = polars::prelude::ParquetReader::new(
        std::fs::File::open(out.join("validation.parquet")).unwrap(),
    )
    .finish()
    .unwrap();
    assert_eq!(df.height(), 50);
    let inputs = prompt2model::data::loaders::string_column(&df, "input").unwrap();
    assert!(
        inputs[0].starts_with("context: ") && inputs[0].contains("\nquestion: "),
        "{}",
        inputs[0]
    );
    let refs = prompt2model::data::loaders::string_list_column(&df, "references").unwrap();
    assert!(refs.iter().all(|r| !r.is_empty()));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("retrieved_dataset.json")).unwrap())
            .unwrap();
    assert_eq!(meta["columns"]["output"], "answers");
    assert_eq!(meta["inputs"][0]["path"], "squad/dev-v1.1.json");
}

#[tokio::test]
async fn dataset_rerank_and_column_selection_with_an_llm() {
    let server = fake_openai::FakeServer::start(fake_openai::ServerConfig {
        lifetime: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let teacher = OpenAiTeacher::new(fake_client(&server.base_url)).unwrap();
    let cand = |rank: usize, name: &str| dr::Candidate {
        rank,
        name: name.into(),
        score: 0.5,
        description: format!("{name} description"),
        tasks: vec![],
        local: None,
    };
    let candidates = [cand(1, "trivia_qa"), cand(2, "squad")];
    let outcome = dr::llm_rerank(&teacher, "answer questions", &candidates, 3, 0).await.unwrap();
    assert_eq!(outcome.chosen.as_deref(), Some("trivia_qa"));
    assert_eq!(outcome.votes["trivia_qa"], 3);
    let cols: Vec<String> = ["context", "question", "answers"].map(String::from).to_vec();
    let choice = dr::llm_select_columns(
        &teacher,
        "answer questions",
        "squad",
        "SQuAD",
        &cols,
        &Default::default(),
        2,
    )
    .await
    .unwrap();
    assert_eq!(
        choice,
        ColumnChoice { input: vec!["context".into(), "question".into()], output: "answers".into() }
    );
    // Columns the dataset does not have are refused, with what was wrong.
    let err = dr::llm_select_columns(
        &teacher,
        "x",
        "d",
        "d",
        &["only".to_string()],
        &Default::default(),
        2,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no valid answer") && err.contains("attempt 2"), "{err}");
}

#[test]
fn selection_config_file_names_dataset_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pick.toml");
    std::fs::File::create(&path).unwrap().write_all(b"dataset = \"neulab/conala\"\ninput_columns = [\"intent\"]\noutput_column = \"snippet\"\n").unwrap();
    let cfg = dr::SelectionConfig::read(&path).unwrap();
    assert_eq!(
        (cfg.dataset.as_str(), cfg.output_column.as_deref()),
        ("neulab/conala", Some("snippet"))
    );
    std::fs::write(&path, "datasets = \"x\"\n").unwrap();
    let err = dr::SelectionConfig::read(&path).unwrap_err().to_string();
    assert!(err.contains("pick.toml") && err.contains("expected: dataset ="), "{err}");
}

#[test]
fn retrieve_model_cli_offline_json() {
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2m"))
        .args(["retrieve-model", "--task", "squad", "--top-k", "3", "--json"])
        .current_dir(common::repo_root())
        .env("P2M_CACHE", cache.path())
        .env("P2M_MIRROR", common::mirror())
        .env("P2M_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ranking"]["models"].as_array().unwrap().len(), 3);
    assert_eq!(v["ranking"]["models"][0]["name"], "google/flan-t5-base");
    assert_eq!(v["index"]["stats"]["indexed"], 11_320);
    // Offline with an empty cache: flan-t5-base (hub-only) falls back to the local student, and says so.
    assert_eq!(v["trainable"]["source"]["kind"], "fallback");
    assert!(v["trainable"]["explanation"]
        .as_str()
        .unwrap()
        .contains("warm-started from all-MiniLM-L6-v2"));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_p2m"))
        .args(["retrieve-model", "--instruction", "x", "--index", "/nonexistent/model_info.tar.gz"])
        .current_dir(common::repo_root())
        .env("P2M_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("/nonexistent/model_info.tar.gz") && err.contains("fix:"), "{err}");
}

/// The full dataset index: encodes 2,494 descriptions (about 90 s on 2 CPU cores the first time;
/// later runs read the project cache). `cargo test --test suite retrievers -- --ignored`.
#[test]
#[ignore = "encodes the 2,494 dataset descriptions (~90 s on CPU) unless the project cache has them"]
fn dataset_retriever_full_index_offline() {
    let paths = prompt2model::config::Paths::from_env().unwrap();
    let paths = prompt2model::config::Paths::with(
        &common::repo_root(),
        Some(common::mirror()),
        paths.cache,
        true,
    );
    let (retriever, _) =
        prompt2model::dataset_retriever::open_dataset_retriever(&paths, None, false).unwrap();
    assert_eq!(retriever.index.entries.len(), 2_494);
    assert_eq!(retriever.embeddings.matrix.len(), 2_494 * retriever.embeddings.dim);
    let all = retriever.retrieve(&squad_instruction(), None).unwrap();
    assert_eq!(all.len(), 2_494);
    let squad = all.iter().find(|c| c.name == "squad").unwrap();
    assert!(squad.loadable());
    assert!(squad.rank <= 100, "squad ranks {} for the SQuAD instruction", squad.rank);
    assert!(
        all[0].tasks.iter().any(|t| t.contains("question"))
            || all[0].description.to_lowercase().contains("question"),
        "{}",
        all[0].name
    );
}

// ---------------------------------------------------------------------------------------------
// Hub datasets through the datasets server (a loopback fake)

/// A tiny index: a SQuAD-like dataset with no local source, and an unrelated one.
pub(crate) fn hub_index(dir: &Path) -> PathBuf {
    let path = dir.join("dataset_index.json");
    let index = serde_json::json!({
        "acme/wiki-qa": {"name": "acme/wiki-qa", "description": "Reading comprehension: questions about Wikipedia passages, each answered by a span of text from the passage.",
            "evaluation_metadata": [{"config": "plain_text", "task": "question-answering",
                "col_mapping": {"question": "question", "context": "context", "answers": {"text": "text", "answer_start": "answer_start"}}}]},
        "acme/recipes": {"name": "acme/recipes", "description": "Cooking recipes with ingredient lists, oven temperatures and baking times."}
    });
    std::fs::write(&path, index.to_string()).unwrap();
    path
}

/// The fake server's datasets: `acme/wiki-qa` with nested answers (250 train rows, 30 validation
/// rows) in `plain_text`, and a second config that must not be used.
pub(crate) fn hub_datasets() -> serde_json::Value {
    let features = serde_json::json!([{"feature_idx": 0, "name": "id", "type": {"dtype": "string", "_type": "Value"}},
        {"feature_idx": 1, "name": "context", "type": {"dtype": "string", "_type": "Value"}},
        {"feature_idx": 2, "name": "question", "type": {"dtype": "string", "_type": "Value"}},
        {"feature_idx": 3, "name": "answers", "type": {"text": {"feature": {"dtype": "string"}, "_type": "Sequence"}, "answer_start": {"feature": {"dtype": "int32"}, "_type": "Sequence"}}}]);
    let rows = |split: &str, n: usize| -> Vec<serde_json::Value> {
        (0..n).map(|i| serde_json::json!({"id": format!("{split}{i}"), "context": format!("ctx {i}"), "question": format!("q {i}?"), "answers": {"text": [format!("a{i}"), format!("b{i}")], "answer_start": [3, 7]}})).collect()
    };
    serde_json::json!({"acme/wiki-qa": {
        "plain_text": {"train": {"features": features, "rows": rows("t", 250)}, "validation": {"features": features, "rows": rows("v", 30)}},
        "other": {"train": {"features": [], "rows": [{"x": 1}]}}
    }})
}

pub(crate) fn p2m_retrieve_dataset(
    cache: &Path,
    server: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    // The MiniLM encoder comes from the project cache's wheel (extracted into the test's cache).
    let project = prompt2model::config::Paths::from_env().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_p2m"));
    cmd.arg("retrieve-dataset")
        .args(args)
        .current_dir(common::repo_root())
        .env("P2M_CACHE", cache)
        .env("P2M_MIRROR", common::mirror())
        .env("P2M_WHEELS", project.cache.join("wheels"))
        .env("HF_DATASETS_SERVER", server)
        .env_remove("P2M_OFFLINE")
        .env_remove("HF_TOKEN");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn retrieve_dataset_loads_a_hub_dataset_through_the_datasets_server() {
    use common::datasets_server::{closed_port_url, fake_datasets_server, Fault};
    use polars::prelude::SerReader;
    let dir = tempfile::tempdir().unwrap();
    let index = hub_index(dir.path());
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let server = fake_datasets_server(
        hub_datasets(),
        vec![
            Fault { at: 2, status: 429, retry_after: Some("1") },
            Fault { at: 4, status: 500, retry_after: None },
        ],
        50,
    );
    let args = [
        "--instruction",
        "Answer a question about a Wikipedia passage with a span of the passage.",
        "--index",
        index.to_str().unwrap(),
        "--encoder",
        "minilm",
        "--max-rows-per-split",
        "120",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let run =
        p2m_retrieve_dataset(&cache, &server.url, &[("HF_TOKEN", "hf_secret_test_token")], &args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        !stderr.contains("hf_secret_test_token")
            && !String::from_utf8_lossy(&run.stdout).contains("hf_secret_test_token"),
        "the token is never printed"
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        v["chosen"], "acme/wiki-qa",
        "online, the best-ranked dataset loads from the hub though it has no local source"
    );
    assert!(v["chosen_by"].as_str().unwrap().contains("online: loaded from the hub"));
    let saved = &v["saved"];
    assert_eq!(saved["splits"], serde_json::json!({"train": 120, "validation": 30}));
    assert_eq!(
        saved["columns"],
        serde_json::json!({"input": ["context", "question"], "output": "answers.text"}),
        "from the index's col_mapping"
    );
    assert!(saved["chosen_by"].as_str().unwrap().contains("col_mapping"));
    assert_eq!(saved["source"]["config"], "plain_text");
    assert_eq!(saved["source"]["config_chosen_by"], "the index's evaluation_metadata config");
    assert_eq!(saved["source"]["from_cache"], false);
    assert!(saved["source"]["url"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/rows?dataset=acme%2Fwiki-qa&config=plain_text", server.url)));

    // Requests: the split list, train in two pages (100 + 20) each once retried (429 with
    // Retry-After, then a 500), validation in one page; every one with the token.
    let paths = server.paths();
    let rows: Vec<&String> = paths.iter().filter(|p| p.starts_with("/rows")).collect();
    assert_eq!(paths.iter().filter(|p| p.starts_with("/splits")).count(), 1, "{paths:?}");
    assert_eq!(rows.len(), 5, "{paths:?}");
    assert!(rows[0].contains("split=train&offset=0&length=100") && rows[1] == rows[0], "{rows:?}");
    assert!(rows[2].contains("split=train&offset=100&length=20") && rows[3] == rows[2], "{rows:?}");
    assert!(rows[4].contains("split=validation&offset=0&length=100"), "{rows:?}");
    assert!(server
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer hf_secret_test_token")));

    let read = |name: &str| {
        polars::prelude::ParquetReader::new(std::fs::File::open(out.join(name)).unwrap())
            .finish()
            .unwrap()
    };
    let train = read("train.parquet");
    assert_eq!(train.height(), 120);
    assert_eq!(
        prompt2model::data::loaders::string_column(&train, "input").unwrap()[119],
        "context: ctx 119\nquestion: q 119?"
    );
    assert_eq!(
        prompt2model::data::loaders::string_list_column(&train, "references").unwrap()[0],
        ["a0", "b0"]
    );
    assert_eq!(read("validation.parquet").height(), 30);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("retrieved_dataset.json")).unwrap())
            .unwrap();
    assert_eq!(meta["registry_id"], "hub:acme/wiki-qa/plain_text");
    assert_eq!(meta["source"]["dataset"], "acme/wiki-qa");

    // Rerun with the server gone: the cache answers, online and offline, with the same rows.
    for offline in ["0", "1"] {
        let out2 = dir.path().join(format!("out-{offline}"));
        let mut args2 = args.to_vec();
        args2[9] = out2.to_str().unwrap();
        let again =
            p2m_retrieve_dataset(&cache, &closed_port_url(), &[("P2M_OFFLINE", offline)], &args2);
        assert!(
            again.status.success(),
            "offline={offline}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(v["chosen"], "acme/wiki-qa");
        assert_eq!(v["saved"]["source"]["from_cache"], true);
        assert_eq!(v["saved"]["splits"], serde_json::json!({"train": 120, "validation": 30}));
        let t2 = polars::prelude::ParquetReader::new(
            std::fs::File::open(out2.join("train.parquet")).unwrap(),
        )
        .finish()
        .unwrap();
        assert!(t2.equals(&train));
    }
}

/// A datasets server whose host name does not resolve (a machine without a network) fails at
/// once with an error the caller can recognise, instead of five retries per dataset. `.invalid`
/// never resolves (RFC 6761).
#[test]
fn a_datasets_server_that_does_not_resolve_fails_at_once_with_a_typed_error() {
    use prompt2model::dataset_retriever::hub;
    let cache = tempfile::tempdir().unwrap();
    let server = hub::ServerConfig {
        endpoint: "http://p2m-no-such-host.invalid".into(),
        token: None,
        max_retries: 5,
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
    };
    let request = hub::HubRequest {
        dataset: "acme/wiki-qa".into(),
        config: None,
        index_config: None,
        max_rows_per_split: 10,
    };
    let Err(err) = hub::load(cache.path(), false, &server, &request) else {
        panic!("a host that does not resolve loaded a dataset")
    };
    let unresolved = prompt2model::util::http::find_unresolved(err.as_ref())
        .unwrap_or_else(|| panic!("no Unresolved in the chain: {err:#}"));
    assert!(unresolved.url.starts_with("http://p2m-no-such-host.invalid/splits"), "{unresolved}");
    let text = format!("{err:#}");
    assert!(text.contains("P2M_OFFLINE") && !text.contains("gave up after"), "{text}");
}

#[test]
fn retrieve_dataset_hub_errors_name_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let index = hub_index(dir.path());
    let out = dir.path().join("out");
    let args = [
        "--instruction",
        "Answer a question about a Wikipedia passage.",
        "--index",
        index.to_str().unwrap(),
        "--encoder",
        "minilm",
        "--out",
        out.to_str().unwrap(),
    ];
    // A server that answers JSON of another shape.
    let wrong = common::serve(
        vec![common::Reply { status: 200, body: b"{\"unexpected\": true}".to_vec() }],
        10,
    );
    let run = p2m_retrieve_dataset(&dir.path().join("cache1"), &wrong.url, &[], &args);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&format!("{}/splits?dataset=acme%2Fwiki-qa", wrong.url))
            && err.contains("no `splits` list")
            && err.contains("HF_DATASETS_SERVER"),
        "{err}"
    );
    // Not JSON at all.
    let html = common::serve(
        vec![common::Reply { status: 200, body: b"<html>login</html>".to_vec() }],
        10,
    );
    let run = p2m_retrieve_dataset(&dir.path().join("cache2"), &html.url, &[], &args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("the answer is not JSON") && err.contains(&html.url),
        "{err}"
    );
    // A gated dataset: 401 is not retried and says what to do.
    let gated = common::serve(
        vec![common::Reply {
            status: 401,
            body: b"{\"error\": \"The dataset is gated.\"}".to_vec(),
        }],
        10,
    );
    let run = p2m_retrieve_dataset(&dir.path().join("cache3"), &gated.url, &[], &args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success()
            && err.contains("HTTP 401")
            && err.contains("The dataset is gated.")
            && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert_eq!(*gated.requests.lock().unwrap(), 1);
    // Offline with nothing cached: the best local dataset, as before (no local one in this index).
    let run = p2m_retrieve_dataset(
        &dir.path().join("cache4"),
        &wrong.url,
        &[("P2M_OFFLINE", "1")],
        &[
            "--instruction",
            "Answer a question.",
            "--index",
            index.to_str().unwrap(),
            "--encoder",
            "minilm",
            "--json",
        ],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["chosen"], serde_json::Value::Null, "offline, nothing of this index is loadable");
    assert_eq!(v["encoder"], "all-MiniLM-L6-v2", "offline, the default encoder is MiniLM");
    // Online with the hub unreachable: DataFinder (the online default) cannot be fetched, so MiniLM
    // is used, on stderr and in the notes.
    let run = p2m_retrieve_dataset(
        &dir.path().join("cache5"),
        &wrong.url,
        &[("HF_ENDPOINT", &common::datasets_server::closed_port_url())],
        &["--instruction", "Answer a question.", "--index", index.to_str().unwrap(), "--json"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["encoder"], "all-MiniLM-L6-v2");
    // The note is one plain line (it goes into model cards); the error chain is on stderr only.
    let note = v["notes"][0].as_str().unwrap();
    assert_eq!(
        note,
        "could not be fetched from the hub: the dataset retriever's encoder `datafinder-huggingface-prompt-queries` was unavailable, all-MiniLM-L6-v2 was used"
    );
    assert!(String::from_utf8_lossy(&run.stderr)
        .contains("warning: encoder `datafinder-huggingface-prompt-queries` unavailable"));
}

// ---------------------------------------------------------------------------------------------
// torch.save checkpoints and the DataFinder encoder

fn fixture(path: &str) -> PathBuf {
    common::repo_root().join("tests/fixtures").join(path)
}

#[test]
fn torch_pickle_reads_torch_save_state_dicts() {
    use prompt2model::models::torch_pickle;
    // Written by scripts/parity/make_torch_pickle_fixtures.py with torch 2.11.
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("torch_pickle/expected.json")).unwrap())
            .unwrap();
    let check = |tensors: &[(String, tch::Tensor)]| {
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let order: Vec<&str> =
            expected["order"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(names, order);
        for (name, t) in tensors {
            let want = &expected["tensors"][name.as_str()];
            let kind = match want["dtype"].as_str().unwrap() {
                "float32" => tch::Kind::Float,
                "float16" => tch::Kind::Half,
                "int64" => tch::Kind::Int64,
                "bool" => tch::Kind::Bool,
                other => panic!("{other}"),
            };
            assert_eq!(t.kind(), kind, "{name}");
            assert_eq!(
                t.size(),
                serde_json::from_value::<Vec<i64>>(want["shape"].clone()).unwrap(),
                "{name}"
            );
            let got: Vec<f32> = Vec::try_from(t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap();
            let values: Vec<f32> = serde_json::from_value(want["values"].clone()).unwrap();
            assert_eq!(
                got, values,
                "{name}: exact values (views are materialised from their storage)"
            );
        }
    };
    let tensors = torch_pickle::read_state_dict(&fixture("torch_pickle/state_dict.bin")).unwrap();
    check(&tensors);
    // Converted to safetensors (atomically), the same tensors come back.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    torch_pickle::convert_to_safetensors(&fixture("torch_pickle/state_dict.bin"), &out).unwrap();
    let mut back = tch::Tensor::read_safetensors(&out).unwrap();
    let order: Vec<String> = expected["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    back.sort_by_key(|(n, _)| order.iter().position(|o| o == n));
    check(&back);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");

    // Not a zip, no data.pkl, a truncated pickle: errors that name the file.
    let plain = dir.path().join("legacy.bin");
    std::fs::write(&plain, b"\x80\x02legacy").unwrap();
    let err = format!("{:#}", torch_pickle::read_state_dict(&plain).unwrap_err());
    assert!(
        err.contains("legacy.bin") && err.contains("not a zip archive") && err.contains("fix:"),
        "{err}"
    );
    let zip_path = dir.path().join("other.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        z.start_file("x/readme.txt", zip::write::FileOptions::default()).unwrap();
        z.write_all(b"hi").unwrap();
        z.finish().unwrap();
    }
    let err = format!("{:#}", torch_pickle::read_state_dict(&zip_path).unwrap_err());
    assert!(err.contains("other.zip") && err.contains("data.pkl"), "{err}");
    let cut = dir.path().join("cut.bin");
    {
        let mut src = zip::ZipArchive::new(
            std::fs::File::open(fixture("torch_pickle/state_dict.bin")).unwrap(),
        )
        .unwrap();
        let mut pkl = Vec::new();
        std::io::Read::read_to_end(&mut src.by_name("state_dict/data.pkl").unwrap(), &mut pkl)
            .unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(&cut).unwrap());
        z.start_file("state_dict/data.pkl", zip::write::FileOptions::default()).unwrap();
        z.write_all(&pkl[..pkl.len() / 2]).unwrap();
        z.finish().unwrap();
    }
    let err = format!("{:#}", torch_pickle::read_state_dict(&cut).unwrap_err());
    assert!(
        err.contains("cut.bin")
            && err.contains("data.pkl")
            && (err.contains("ends inside") || err.contains("member")),
        "{err}"
    );
}

/// A model registry over the real data/models.toml with a private cache; MiniLM comes from the
/// project cache's wheel.
fn private_models(cache: &Path, offline: bool) -> prompt2model::models::registry::ModelRegistry {
    let project = prompt2model::config::Paths::from_env().unwrap();
    let paths = prompt2model::config::Paths::with(
        &common::repo_root(),
        Some(common::mirror()),
        cache.to_path_buf(),
        offline,
    );
    let mut sources = prompt2model::models::registry::Sources::from_env(&paths);
    sources.wheel_dirs.push(project.cache.join("wheels"));
    prompt2model::models::registry::ModelRegistry::load(paths).unwrap().with_sources(sources)
}

#[test]
fn datafinder_encoder_from_the_hub_matches_transformers() {
    // The fake hub serves a tiny random BERT as the DataFinder repo ships its files (2022):
    // config.json, pytorch_model.bin, vocab.txt, tokenizer_config.json; no safetensors, no tokenizer.json.
    let files: Vec<(String, Vec<u8>)> =
        ["config.json", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json"]
            .iter()
            .map(|n| {
                (n.to_string(), std::fs::read(fixture(&format!("datafinder_tiny/{n}"))).unwrap())
            })
            .collect();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("datafinder_tiny/expected.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _lock = common::hub_endpoint_lock();
    let (url, seen) = common::fake_hub(files, 200);
    std::env::set_var("HF_ENDPOINT", &url);
    let models = private_models(dir.path(), false);
    let (encoder, notes) = dr::choose_encoder(&models, None, false).unwrap();
    std::env::remove_var("HF_ENDPOINT");
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(encoder.id, dr::DATAFINDER_ENCODER, "online, the default encoder is DataFinder");
    assert!(seen.lock().unwrap().iter().any(|p| p.starts_with(
        "/viswavi/datafinder-huggingface-prompt-queries/resolve/main/pytorch_model.bin"
    )));
    let folder = dir.path().join("models").join(dr::DATAFINDER_ENCODER);
    assert!(
        folder.join("model.safetensors").is_file() && !folder.join("pytorch_model.bin").exists(),
        "converted once; the .bin stays in the hf-hub cache"
    );
    assert_eq!(
        encoder.weights_sha256,
        common::sha256_hex(&std::fs::read(folder.join("model.safetensors")).unwrap())
    );
    let bert = &encoder.encoder;
    assert_eq!(
        (bert.pooling, bert.normalize, bert.max_length()),
        (prompt2model::models::bert::Pooling::Cls, false, 128)
    );
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<i64> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(
            bert.tokenize(&[text]).unwrap()[0],
            ids,
            "WordPiece from vocab.txt, as BertTokenizer: {text}"
        );
        let (emb, dim) = encoder.embed(&[text]).unwrap();
        let want: Vec<f32> = serde_json::from_value(case["cls"].clone()).unwrap();
        assert_eq!(dim, want.len());
        for (i, (g, w)) in emb.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-4, "{text}: dim {i}: {g} vs transformers {w}");
        }
    }
    // Afterwards the folder serves offline, without the hub.
    let offline = private_models(dir.path(), true);
    let again = dr::Encoder::from_hub(&offline, dr::DATAFINDER_ENCODER).unwrap();
    assert_eq!(again.weights_sha256, encoder.weights_sha256);
    // Offline with an empty cache, asking for DataFinder: MiniLM, and a note that says why.
    let empty = tempfile::tempdir().unwrap();
    let (fallback, notes) =
        dr::choose_encoder(&private_models(empty.path(), true), Some("datafinder"), true).unwrap();
    assert_eq!(fallback.id, dr::DEFAULT_ENCODER);
    // One plain line, fit for a model card: no error chain, no URL (those go to stderr).
    assert_eq!(
        notes,
        [format!(
            "offline: the dataset retriever's encoder `{}` was unavailable, all-MiniLM-L6-v2 was used",
            dr::DATAFINDER_ENCODER
        )]
    );
    let err =
        dr::choose_encoder(&offline, Some("no-such-encoder"), true).err().unwrap().to_string();
    assert!(
        err.contains("--encoder no-such-encoder") && err.contains("minilm, datafinder"),
        "{err}"
    );
}

#[test]
fn retrieve_model_fetch_downloads_the_top_model() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("model_info.tar.gz");
    tar_gz(
        &index,
        &[
            (
                "a.json",
                &card(
                    "acme/t5-qa-tiny",
                    "t5 model for extractive question answering over passages",
                    "1000",
                    500,
                ),
            ),
            ("b.json", &card("acme/t5-news-sum", "t5 model for news summarization", "1000", 50)),
        ],
    );
    let config = br#"{"model_type": "t5", "d_model": 8}"#.to_vec();
    let weights = b"not really safetensors, only bytes to move".to_vec();
    let tokenizer = br#"{"version": "1.0"}"#.to_vec();
    let (url, seen) = common::fake_hub(
        vec![
            ("config.json".into(), config.clone()),
            ("model.safetensors".into(), weights.clone()),
            ("tokenizer.json".into(), tokenizer.clone()),
        ],
        200,
    );
    let cache = dir.path().join("cache");
    // A child process: its HF_ENDPOINT is its own, so no lock is needed.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2m"))
        .args([
            "retrieve-model",
            "--instruction",
            "answer questions about a passage",
            "--index",
            index.to_str().unwrap(),
            "--fetch",
            "--json",
        ])
        .current_dir(common::repo_root())
        .env("P2M_CACHE", &cache)
        .env("P2M_MIRROR", common::mirror())
        .env("HF_ENDPOINT", &url)
        .env_remove("P2M_OFFLINE")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ranking"]["models"][0]["name"], "acme/t5-qa-tiny");
    assert_eq!(
        v["trainable"]["source"],
        serde_json::json!({"kind": "hub", "repo": "acme/t5-qa-tiny"})
    );
    let folder = stderr
        .lines()
        .find_map(|l| l.strip_prefix("fetched into "))
        .unwrap_or_else(|| panic!("the folder is reported: {stderr}"));
    let folder = Path::new(folder.trim());
    assert!(folder.starts_with(cache.join("hf-hub")), "{}", folder.display());
    assert_eq!(std::fs::read(folder.join("config.json")).unwrap(), config);
    assert_eq!(std::fs::read(folder.join("model.safetensors")).unwrap(), weights);
    assert_eq!(std::fs::read(folder.join("tokenizer.json")).unwrap(), tokenizer);
    let paths = seen.lock().unwrap().clone();
    assert!(
        paths.iter().all(|p| p.starts_with("/acme/t5-qa-tiny/resolve/main/")),
        "only the top model is fetched: {paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.ends_with("pytorch_model.bin")),
        "safetensors found first: {paths:?}"
    );
}
