//! The two prompts of the transform step, written for this project (the shape follows the
//! reference's retrieve-and-transform idea: the instruction, a sample of retrieved rows and the
//! demonstrations for the plan; the plan, one row and the demonstrations for each rewrite).

use crate::data::examples::Example;
use crate::prompt_parser::{format_demonstrations, ParsedPrompt};

/// Characters of one row shown to the teacher: rows of hub datasets can be whole articles, and a
/// small local teacher has a 2,048-token context; the cut is marked with `…`.
pub const ROW_CHARS: usize = 1500;

/// Characters of each sample row in the plan prompt (several rows share the prompt).
pub const SAMPLE_ROW_CHARS: usize = 400;

/// `text`, cut to `max` characters (marked with `…` when cut).
fn clip(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max).collect();
    s.push('…');
    s
}

fn demonstrations(prompt: &ParsedPrompt) -> String {
    if prompt.demonstrations.is_empty() {
        "N/A (the instruction is all there is)".to_string()
    } else {
        format_demonstrations(&prompt.demonstrations)
    }
}

/// A retrieved row as the teacher sees it: its textualised columns, then its answer.
fn row_text(row: &Example, max: usize) -> String {
    format!("{}\nanswer column: {}", clip(&row.input, max), clip(&row.output, max / 2))
}

/// The plan prompt: what the task is, what it looks like, what the found dataset's rows look
/// like; the answer is a short numbered plan in plain text.
pub fn plan_prompt(prompt: &ParsedPrompt, sample: &[Example]) -> String {
    let rows: Vec<String> = sample
        .iter()
        .enumerate()
        .map(|(i, r)| format!("Row {}:\n{}", i + 1, row_text(r, SAMPLE_ROW_CHARS)))
        .collect();
    format!(
        "A model is to be trained for a task, and an existing dataset was found that may help. \
         Its rows are in the dataset's own format, not the task's.\n\n\
         [task instruction]:\n{}\n\n[task examples]:\n{}\n\n[rows of the found dataset]:\n{}\n\n\
         Write a short plan, at most 6 numbered steps, for rewriting ONE row of this dataset into \
         ONE example of the task: what the example's input is built from, what its output is, and \
         what to do when a row lacks something the task needs. Write only the plan.",
        prompt.instruction.trim(),
        demonstrations(prompt),
        rows.join("\n\n")
    )
}

/// The transform prompt: the task, the plan, one row; the answer is one `{"input", "output"}`
/// JSON object (asked for as structured output too).
pub fn transform_prompt(prompt: &ParsedPrompt, plan: &str, row: &Example) -> String {
    format!(
        "Rewrite one row of a dataset into one example of a task, following the plan.\n\n\
         [task instruction]:\n{}\n\n[task examples]:\n{}\n\n[plan]:\n{}\n\n[dataset row]:\n{}\n\n\
         Answer with one JSON object {{\"input\": \"…\", \"output\": \"…\"}}: \"input\" is what the \
         model is given and \"output\" what it must answer, in the form of the task examples.\n\
         [example (in JSON)]:",
        prompt.instruction.trim(),
        demonstrations(prompt),
        plan.trim(),
        row_text(row, ROW_CHARS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_carry_the_task_the_rows_and_the_plan() {
        let p = ParsedPrompt::new("Answer the question.", vec![Example::new("Q: a?", "b")]);
        let rows = [Example::new("question: who?\nanswer: x", "x"), Example::new("q2", "y")];
        let plan = plan_prompt(&p, &rows);
        assert!(plan.contains("Answer the question.") && plan.contains("input=\"Q: a?\""));
        assert!(plan.contains("Row 2:\nq2\nanswer column: y"), "{plan}");
        let t = transform_prompt(&p, "1. Use the question.", &rows[0]);
        assert!(t.contains("[plan]:\n1. Use the question.") && t.contains("question: who?"));
        assert!(t.ends_with("[example (in JSON)]:"));
        let long = "w".repeat(ROW_CHARS + 10);
        let t = transform_prompt(&p, "plan", &Example::new(long, "o"));
        assert!(t.contains(&format!("{}…", "w".repeat(ROW_CHARS))));
        let none = ParsedPrompt::new("Do it.", vec![]);
        assert!(plan_prompt(&none, &rows).contains("[task examples]:\nN/A"));
    }
}
