//! Loaders: row counts and content of the real test sets, Hugging Face save_to_disk folders, and
//! clear errors on malformed input.

use crate::common;

use std::fs;

use prompt2model::data::loaders::{self, HfDisk};
use prompt2model::data::registry::DataError;

#[test]
fn squad_dev_keeps_every_gold_answer() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let squad = loaders::load_dataset(&registry, "squad-v1.1-dev").unwrap().frame;
    assert_eq!(squad.height(), 10570);
    let refs = loaders::string_list_column(&squad, loaders::REFERENCES).unwrap();
    assert_eq!(
        refs.iter().map(Vec::len).sum::<usize>(),
        34726,
        "all gold answers (duplicates included) are kept"
    );
    assert_eq!(refs[0], ["Denver Broncos", "Denver Broncos", "Denver Broncos"]);
    let inputs = loaders::string_column(&squad, loaders::INPUT).unwrap();
    assert!(inputs[0].starts_with(
        "Question: Which NFL team represented the AFC at Super Bowl 50? Context: Super Bowl 50 was"
    ));
}

#[test]
fn mconala_conala_and_temporal_load_in_the_common_schema() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let m = loaders::load_dataset(&registry, "mconala-ja-test").unwrap().frame;
    assert_eq!(m.height(), 210);
    assert_eq!(
        loaders::string_column(&m, "input").unwrap()[0],
        "2次元配列`arr`の要素となっている1次元配列から先頭の値のみを抜き出す"
    );
    assert_eq!(loaders::string_list_column(&m, "references").unwrap()[0], ["arr[:, 0]"]);
    let c = loaders::load_dataset(&registry, "conala-train").unwrap().frame;
    assert_eq!(c.height(), 2379);
    let t = loaders::load_dataset(&registry, "temporal").unwrap().frame;
    assert_eq!(t.height(), 860);
    assert_eq!(
        loaders::string_list_column(&t, "references").unwrap()[0],
        ["2009 == 2009 | 2010 == 2010"]
    );
    for df in [&m, &c, &t] {
        assert_eq!(&df.get_column_names()[..3], &["id", "input", "references"]);
    }
}

#[test]
fn recorded_gpt_references_equal_the_registry_test_sets() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    for (folder, dataset) in [
        ("p2m_runs/baseline/gpt_baseline/results/normalization_gpt_results", "temporal"),
        ("p2m_runs/baseline/gpt_baseline/results/jp2python_gpt_results", "mconala-ja-test"),
    ] {
        let p = prompt2model::tables::load_recorded_predictions(&registry, folder).unwrap();
        let test = loaders::load_dataset(&registry, dataset).unwrap().frame;
        assert_eq!(
            p.references,
            loaders::string_list_column(&test, "references").unwrap(),
            "{folder}"
        );
        assert_eq!(p.inputs, loaders::string_column(&test, "input").unwrap(), "{folder}");
    }
}

#[test]
fn dataset_dicts_load_every_split() {
    let cache = tempfile::tempdir().unwrap();
    let registry = common::mirror_registry(cache.path());
    let (disk, _, files) = loaders::load_registered_hf_disk(
        &registry,
        "p2m_runs/generation/generated_dataset/flan-t5-base_jp2python",
    )
    .unwrap();
    let HfDisk::Dict(splits) = disk else { panic!("expected a DatasetDict") };
    let sizes: Vec<(String, usize)> = splits.iter().map(|(k, v)| (k.clone(), v.height())).collect();
    assert_eq!(
        sizes,
        [("test".to_string(), 1000), ("train".to_string(), 3000), ("val".to_string(), 1000)]
    );
    assert!(files.len() >= 10);
    let train = &splits["train"];
    for c in ["input_col", "output_col", "model_input", "model_output"] {
        assert!(train.column(c).is_ok(), "missing {c}");
    }
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.json");
    fs::write(
        &path,
        "{\"data\": [{\"title\": \"x\",\n \"paragraphs\": [ {\"context\": 3 } ] } ] }",
    )
    .unwrap();
    let err = loaders::load_squad_json(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::Malformed { .. }));
    assert!(msg.contains(&path.display().to_string()) && msg.contains("line 2"), "{msg}");

    let t = dir.path().join("t.json");
    fs::write(&t, r#"[["only input and output", "x"]]"#).unwrap();
    let msg = loaders::load_temporal_json(&t).unwrap_err().to_string();
    assert!(msg.contains("row 0") && msg.contains("found 2 fields"), "{msg}");
}

#[test]
fn truncated_arrow_names_the_file() {
    let src = common::mirror().join("p2m_runs/baseline/gpt_baseline/results/jp2python_gpt_results");
    let dir = tempfile::tempdir().unwrap();
    for f in ["state.json", "dataset_info.json"] {
        fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let arrow = fs::read(src.join("data-00000-of-00001.arrow")).unwrap();
    fs::write(dir.path().join("data-00000-of-00001.arrow"), &arrow[..arrow.len() / 3]).unwrap();
    let err = loaders::load_hf_disk(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("data-00000-of-00001.arrow") && msg.contains("Arrow IPC stream"), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    let msg = loaders::load_hf_disk(empty.path()).unwrap_err().to_string();
    assert!(msg.contains("not a Hugging Face save_to_disk folder"), "{msg}");
}
