//! The data diagnostics and the gate on the paper authors' recorded generations: the gate must
//! let the paper's own teacher data through (its thresholds would otherwise stop the paper's
//! runs), and the diagnostics must see what the tasks are.

use prompt2model::config::Paths;
use prompt2model::data::diagnostics::diagnose;
use prompt2model::data::examples::Example;
use prompt2model::data::gate::{check_data, DataGate};
use prompt2model::data::registry::Registry;
use prompt2model::evaluator::metric_choice::choose_metric;
use prompt2model::prompt_parser::ParsedPrompt;

#[test]
fn the_paper_authors_generations_pass_the_gate() {
    let paths = Paths { offline: true, ..Paths::from_env().unwrap() };
    let registry = Registry::load(paths.clone()).unwrap();
    let tasks = prompt2model::data::tasks::load_tasks(&paths.data).unwrap();
    let recorded = prompt2model::pipeline::recorded::load(&paths.data).unwrap();
    assert!(!recorded.is_empty());
    for r in &recorded {
        let task = prompt2model::data::tasks::find(&tasks, &r.id).unwrap();
        let (rows, _) = prompt2model::pipeline::recorded::recorded_examples(
            &registry,
            &r.generated,
            &["train"],
        )
        .unwrap();
        let prompt = ParsedPrompt::new(
            task.instruction.clone(),
            task.demonstrations.iter().map(|d| Example::new(&d.input, &d.output)).collect(),
        );
        let d = diagnose(&rows, &prompt, 0);
        println!("{}: {}", r.id, d.summary_line());
        assert_eq!(d.examples, rows.len());
        assert_eq!(check_data(&d, &DataGate::default()), Ok(()), "{}:\n{}", r.id, d.to_markdown());
        // None of the paper's tasks has an answer set: each stays a generation task, judged by
        // its own metric.
        assert!(!d.is_classification(), "{}:\n{}", r.id, d.to_markdown());
        assert_eq!(choose_metric(Some(&d), Some(task.metric()), None).primary(), task.metric());
    }
}
