//! Table 2's fifth arm, "retrieval (transformed) + generation": the retrieval arm's rows
//! rewritten by a live teacher into SQuAD's format ([`crate::dataset_transformer`]), beside the
//! generated rows. The retrieved dataset (NQ-Open offline: questions without passages) does not
//! look like the task, which is why "retrieval + generation" gains nothing over generation alone;
//! this arm asks whether retrieved data in the task's shape does.
//!
//! The recorded teacher answers nothing, so without a live teacher the arm is not run and the
//! report says so ([`skipped_note`]). With one, the answers are kept in
//! `<runs dir>/transform/teacher_cache.sqlite`: every process that plans the table (the cells,
//! a rerun) replays them, so the arm's data is the same everywhere and paid for once.

use super::*;
use crate::dataset_transformer::{self as dt, TransformConfig};
use crate::teacher::{CacheMode, CachedTeacher, Teacher, TeacherSettings};

pub(super) const TRANSFORMED_ARM: &str = "retrieval (transformed) + generation";

/// The report's line when the arm is not run.
pub(super) fn skipped_note() -> String {
    format!(
        "Arm \"{TRANSFORMED_ARM}\" skipped: it needs a live teacher to rewrite the retrieved rows into SQuAD's format (`table2 --teacher openai --base-url …`, or `--teacher local`); the recorded teacher answers nothing."
    )
}

/// The retrieved training and validation rows of the retrieval arm, rewritten by the teacher;
/// returns the source (its own splits kept, as the retrieval arm's), what it is, the full price
/// of the answers (billed now or replayed), and the note for the report.
pub(super) fn transform_retrieved(
    settings: &TeacherSettings,
    runs_dir: &Path,
    squad_prompt: &str,
    retrieval_only: &crate::pipeline::assemble::Assembled,
    seed: u64,
) -> Result<(SourceRows, f64, String)> {
    let parsed = crate::prompt_parser::parse_deterministic(squad_prompt)
        .context("parsing the SQuAD prompt of data/tasks.toml")?;
    let rows: Vec<Example> = retrieval_only
        .train
        .iter()
        .chain(&retrieval_only.validation)
        .map(|r| Example::new(r.input.clone(), r.output.clone()))
        .collect();
    let n_train = retrieval_only.train.len();
    let cache = runs_dir.join("transform").join("teacher_cache.sqlite");
    let teacher = CachedTeacher::open(settings.build()?, &cache, CacheMode::ReadWrite)?;
    let cfg = TransformConfig { max_rows: rows.len(), seed, ..Default::default() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let t = rt
        .block_on(dt::transform(&teacher, &parsed, &rows, &cfg, None))
        .context("transforming the retrieval arm's rows for the transformed arm")?;
    dt::write_transformed(&runs_dir.join("transform"), &t)?;
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (example, &from) in t.examples.iter().zip(&t.origin) {
        (if from < n_train { &mut train } else { &mut validation }).push(example.clone());
    }
    let cost = t.log.full_cost(&Pricing::for_model(teacher.model()));
    let note = format!(
        "Arm \"{TRANSFORMED_ARM}\": the retrieval arm's training and validation rows rewritten into SQuAD's format by {} / {} (a plan, then one {{\"input\", \"output\"}} answer per row at temperature 0; answers cached in {}): {}. The transformed rows keep the retrieval arm's split ({} train, {} validation) and are added to the generation arm's rows as the retrieved source (task 1), as `p2m run --transform-retrieved` adds them.",
        teacher.backend(),
        teacher.model(),
        cache.display(),
        t.log.describe(),
        train.len(),
        validation.len()
    );
    let source = SourceRows { train, validation: Some(validation), test: Some(Vec::new()) };
    Ok((source, cost, note))
}
