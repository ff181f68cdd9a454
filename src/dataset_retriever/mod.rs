//! The dataset retriever (Prompt2Model §3.2, with the reference's later LLM reranking and column
//! selection).
//!
//! 1. **Index.** The 2,494 entries of `prompt2model/dataset_index.json` (name → description,
//!    evaluation metadata), in name order as the reference sorts them.
//! 2. **Dense retrieval.** Every description is encoded once with a sentence encoder (MiniLM
//!    offline; the paper's DataFinder encoder online, fetched from the hub, see
//!    [`choose_encoder`]) and the matrix is cached on disk
//!    (`retrieval/dataset_embeddings-<encoder>.bin`), keyed by the index's and the encoder
//!    weights' sha256. A query is the instruction's embedding; search is an exact inner product
//!    (MiniLM's embeddings are L2-normalised, so cosine similarity; DataFinder's CLS vectors are
//!    not, as in the reference), top-25.
//! 3. **Choice.** Optionally an LLM reranks the candidates by majority over several sampled votes,
//!    names that are not candidates counting as abstentions ([`llm_rerank`]). Without an LLM the
//!    user picks in the terminal ([`interactive_pick`]) or names the dataset in a config file
//!    ([`SelectionConfig`]); by default the best-ranked dataset that can be loaded here is taken.
//! 4. **Columns.** The LLM names input columns and one output column as JSON, validated against
//!    the dataset's columns ([`validate_column_choice`]); or the user/config does; or each local
//!    format's natural columns are used.
//! 5. **Textualise.** Each row's input is its input columns as `col: value` lines; the output
//!    column gives the references; at most 3,000 rows per split; saved in the registry's common
//!    schema (`<split>.parquet`) with a `retrieved_dataset.json` that says what was chosen and why.
//!
//! Online any dataset of the index loads from the hub ([`crate::dataset_retriever::hub`]). Offline only
//! datasets with a local source (or a hub copy in the cache) can be loaded: `data/datasets.toml` names each local
//! dataset's names in the index (`hf_index_names`), and those whose format has a loader are marked
//! loadable.

pub mod choice;
pub mod hub;
pub mod index;
pub mod selection;
pub mod textualise;

pub use choice::*;
pub use hub::default_hub_columns;
pub use index::*;
pub use selection::{select_dataset, Chooser, Selection, SelectionRequest};
pub use textualise::*;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::util::json_scan::first_json_object;

    fn cand(rank: usize, name: &str) -> Candidate {
        Candidate {
            rank,
            name: name.into(),
            score: 1.0 / rank as f64,
            description: String::new(),
            tasks: vec![],
            local: None,
        }
    }

    #[test]
    fn votes_count_only_candidates_and_ties_go_to_the_better_rank() {
        let c = [cand(1, "squad"), cand(2, "adversarial_qa"), cand(3, "trivia_qa")];
        let answers = [
            "{\"name\": \"trivia_qa\"}",
            "```json\n{\"name\": \"adversarial_qa\"}\n```",
            "{\"name\": \"made_up\"}",
            "no idea",
            "{\"name\": null}",
        ]
        .map(String::from);
        let o = tally_votes(&answers, &c);
        assert_eq!(o.chosen.as_deref(), Some("adversarial_qa"), "1–1 tie: rank 2 beats rank 3");
        assert_eq!(o.abstentions, 3);
        let o = tally_votes(
            &[
                "{\"name\":\"trivia_qa\"}".into(),
                "{\"name\":\"trivia_qa\"}".into(),
                "{\"name\":\"squad\"}".into(),
            ],
            &c,
        );
        assert_eq!(o.chosen.as_deref(), Some("trivia_qa"));
        assert_eq!(tally_votes(&["nothing".into()], &c).chosen, None);
    }

    #[test]
    fn column_answers_are_validated() {
        let cols: Vec<String> = ["context", "question", "answers"].map(String::from).to_vec();
        let ok = validate_column_choice(
            "Sure: {\"input\": [\"context\", \"question\"], \"output\": \"answers\"} done",
            &cols,
        )
        .unwrap();
        assert_eq!(
            ok,
            ColumnChoice {
                input: vec!["context".into(), "question".into()],
                output: "answers".into()
            }
        );
        assert!(validate_column_choice(
            "{\"input\": [\"passage\"], \"output\": \"answers\"}",
            &cols
        )
        .unwrap_err()
        .contains("`passage` is not a column"));
        assert!(validate_column_choice(
            "{\"input\": [\"answers\"], \"output\": \"answers\"}",
            &cols
        )
        .unwrap_err()
        .contains("also an input"));
        assert!(validate_column_choice("{\"input\": []}", &cols).is_err());
        assert!(validate_column_choice("no json", &cols).unwrap_err().contains("no JSON"));
    }

    #[test]
    fn json_objects_are_found_inside_prose() {
        let v = first_json_object("x {bad} then {\"a\": \"}\"} tail").unwrap();
        assert_eq!(v["a"], "}");
    }

    #[test]
    fn textualise_writes_col_value_lines_and_caps_rows() {
        let split = RawSplit {
            split: "train".into(),
            ids: vec!["a".into(), "b".into(), "c".into()],
            columns: vec![
                ("question".into(), RawColumn::Text(vec!["q1".into(), "q2".into(), "q3".into()])),
                ("context".into(), RawColumn::Text(vec!["c1".into(), "c2".into(), "c3".into()])),
                (
                    "answers".into(),
                    RawColumn::List(vec![vec!["x".into(), "y".into()], vec!["z".into()], vec![]]),
                ),
            ],
        };
        let choice = ColumnChoice {
            input: vec!["question".into(), "context".into()],
            output: "answers".into(),
        };
        let df = columns_as_text(&split, &choice, 2).unwrap();
        assert_eq!(df.height(), 2);
        assert_eq!(
            crate::data::loaders::string_column(&df, "input").unwrap(),
            ["question: q1\ncontext: c1", "question: q2\ncontext: c2"]
        );
        assert_eq!(
            crate::data::loaders::string_list_column(&df, "references").unwrap(),
            [vec!["x".to_string(), "y".to_string()], vec!["z".to_string()]]
        );
    }

    #[test]
    fn interactive_pick_retries_until_a_valid_number() {
        let c = [cand(1, "squad"), cand(2, "trivia_qa")];
        let mut input: &[u8] = b"7\nabc\n2\n";
        let mut out = Vec::new();
        assert_eq!(interactive_pick(&c, &mut input, &mut out).unwrap(), Some(1));
        let shown = String::from_utf8(out).unwrap();
        assert!(
            shown.contains("trivia_qa") && shown.contains("`7` is not a number between 1 and 2"),
            "{shown}"
        );
        let mut input: &[u8] = b"\n";
        assert_eq!(interactive_pick(&c, &mut input, &mut Vec::new()).unwrap(), None);
        let cols: Vec<String> = ["q", "a"].map(String::from).to_vec();
        let mut input: &[u8] = b"q\nq\nq\na\n";
        let choice =
            interactive_columns(&cols, &BTreeMap::new(), &mut input, &mut Vec::new()).unwrap();
        assert_eq!(choice, ColumnChoice { input: vec!["q".into()], output: "a".into() });
    }
}
