//! The prompt parser on the paper's three prompts (`data/tasks.toml`): the deterministic mode must
//! reproduce the stored instruction/demonstration split exactly; the LLM mode is driven by a
//! scripted test double of the teacher trait.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use prompt2model::data::examples::Example;
use prompt2model::prompt_parser::{
    detect_language, format_demonstrations, parse_deterministic, parse_prompt, parse_with_teacher,
    translate_instruction, Language, ParseError, ParseMode, ParsedPrompt, ParserConfig,
};
use prompt2model::teacher::{ChatRequest, ChatResponse, Choice, Teacher, TeacherError, Usage};

#[derive(serde::Deserialize)]
struct Tasks {
    task: Vec<Task>,
}

#[derive(serde::Deserialize)]
struct Task {
    id: String,
    prompt: String,
    instruction: String,
    #[serde(rename = "demonstration")]
    demonstrations: Vec<Example>,
}

fn tasks() -> Vec<Task> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tasks.toml");
    toml::from_str::<Tasks>(&std::fs::read_to_string(path).unwrap()).unwrap().task
}

/// A teacher that answers from a script and records what it was asked (test double).
struct Scripted {
    answers: Mutex<VecDeque<Result<String, TeacherError>>>,
    seen: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    fn new(answers: Vec<Result<String, TeacherError>>) -> Self {
        Scripted { answers: Mutex::new(answers.into()), seen: Mutex::new(Vec::new()) }
    }
    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Teacher for Scripted {
    fn backend(&self) -> &str {
        "scripted"
    }
    fn model(&self) -> &str {
        "script"
    }
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, TeacherError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(request.clone());
            let next = self.answers.lock().unwrap().pop_front().expect("the script ran out");
            next.map(|content| ChatResponse {
                choices: vec![Choice { index: 0, content, finish_reason: Some("stop".into()) }],
                usage: Usage { prompt_tokens: 10, completion_tokens: 10 },
                cost_usd: 0.0,
                cached: false,
            })
        })
    }
}

/// What a well-behaved LLM answers for a task, in the reference's format (demonstrations as a
/// string, verbatim from the prompt).
fn reference_answer(t: &Task) -> String {
    serde_json::json!({"Instruction": t.instruction, "Demonstrations": format_demonstrations(&t.demonstrations)}).to_string()
}

#[test]
fn deterministic_mode_reproduces_the_stored_split_of_the_papers_prompts() {
    let tasks = tasks();
    assert_eq!(tasks.len(), 3);
    for t in &tasks {
        let p = parse_deterministic(&t.prompt).unwrap();
        assert_eq!(p.instruction, t.instruction, "instruction of `{}`", t.id);
        assert_eq!(
            p.demonstrations.len(),
            t.demonstrations.len(),
            "number of demonstrations of `{}`",
            t.id
        );
        for (i, (got, want)) in p.demonstrations.iter().zip(&t.demonstrations).enumerate() {
            assert_eq!(got, want, "demonstration {i} of `{}`", t.id);
        }
        let expected = if t.id == "mconala" { Language::Japanese } else { Language::English };
        assert_eq!(p.language, expected, "language of `{}`", t.id);
    }
}

#[test]
fn deterministic_mode_handles_curly_quotes_and_one_line_pairs() {
    let t = tasks().into_iter().find(|t| t.id == "temporal").unwrap();
    // The same prompt with curly quotes around the values.
    let curly = t
        .prompt
        .replace("input=\"", "input=“")
        .replace("output=\"", "output=“")
        .replace("\"\n", "”\n");
    let p = parse_deterministic(&curly).unwrap();
    assert_eq!(p.demonstrations, t.demonstrations);
    // Pairs on one line each.
    let one_line = "Map each word to its length.\n\ninput=\"cat\" output=\"3\"\ninput=\"horse\" output=\"5\"\n";
    let p = parse_deterministic(one_line).unwrap();
    assert_eq!(p.instruction, "Map each word to its length.");
    assert_eq!(p.demonstrations, vec![Example::new("cat", "3"), Example::new("horse", "5")]);
    assert!(matches!(parse_deterministic("   \n "), Err(ParseError::Empty)));
}

#[test]
fn language_detection_by_script() {
    assert_eq!(detect_language("Classify the sentiment of the sentence."), Language::English);
    assert_eq!(detect_language("データベースの設定を表示する"), Language::Japanese);
    assert_eq!(detect_language("你能告诉我一些菜需要准备的原料么？"), Language::Chinese);
    assert_eq!(
        detect_language("Klassifizieren Sie die Stimmung des Satzes bitte sorgfältig."),
        Language::Other
    );
    assert_eq!(detect_language("12345 !!!"), Language::Other);
}

#[tokio::test]
async fn llm_mode_parses_the_papers_prompts() {
    for t in tasks() {
        let teacher = Scripted::new(vec![Ok(format!("```json\n{}\n```", reference_answer(&t)))]);
        let p = parse_with_teacher(&teacher, &t.prompt, &ParserConfig::default()).await.unwrap();
        assert_eq!(p.instruction, t.instruction, "{}", t.id);
        assert_eq!(p.demonstrations, t.demonstrations, "{}", t.id);
        let seen = teacher.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let sent = &seen[0].messages[0].content;
        assert!(sent.starts_with("\nAs a PromptParser"));
        assert!(
            sent.ends_with(&format!("Prompt: \"\"\"\n{}\n\"\"\"\n\nParsed Outputs:\n", t.prompt))
        );
        assert_eq!(seen[0].params.temperature, 0.0);
    }
}

#[tokio::test]
async fn llm_mode_validates_and_retries_a_bounded_number_of_times() {
    let t = tasks().into_iter().find(|t| t.id == "squad").unwrap();
    let teacher = Scripted::new(vec![
        Ok("I think the instruction is the first paragraph.".into()),
        Ok(r#"{"Task": "answer questions", "Examples": "N/A"}"#.into()),
        Err(TeacherError::EmptyChoices),
        Ok(serde_json::json!({
            "Instruction": t.instruction,
            "Demonstrations": t.demonstrations.iter().map(|d| serde_json::json!({"input": d.input, "output": d.output})).collect::<Vec<_>>(),
        })
        .to_string()),
    ]);
    let cfg = ParserConfig { max_attempts: 4, ..Default::default() };
    let p = parse_with_teacher(&teacher, &t.prompt, &cfg).await.unwrap();
    assert_eq!(
        (p.instruction.as_str(), &p.demonstrations),
        (t.instruction.as_str(), &t.demonstrations)
    );
    assert_eq!(teacher.calls(), 4);
    let seeds: Vec<_> = teacher.seen.lock().unwrap().iter().map(|r| r.params.seed).collect();
    assert_eq!(
        seeds,
        [Some(0), Some(1), Some(2), Some(3)],
        "retries are distinct requests (distinct cache keys)"
    );

    // A hallucinated instruction and a made-up demonstration are rejected; after the attempts
    // the LLM mode errors and the auto mode falls back to the layout rules.
    let bad: Vec<String> = vec![
        r#"{"Instruction": "Answer questions about Wikipedia articles.", "Demonstrations": "N/A"}"#.to_string(),
        serde_json::json!({"Instruction": t.instruction, "Demonstrations": "input=\"What is 2+2?\"\noutput=\"4\""}).to_string(),
        "{\"Instruction\": \"".into(),
    ];
    let teacher = Scripted::new(bad.iter().cloned().map(Ok).collect());
    let llm = ParserConfig { mode: ParseMode::Llm, ..Default::default() };
    match parse_prompt(&t.prompt, Some(&teacher), &llm).await {
        Err(ParseError::Llm { attempts: 3, problems }) => {
            assert!(problems[0].contains("not a verbatim part"), "{problems:?}");
            assert!(problems[1].contains("demonstration"), "{problems:?}");
            assert!(problems[2].contains("no JSON object"), "{problems:?}");
        }
        other => panic!("{other:?}"),
    }
    let teacher = Scripted::new(bad.into_iter().map(Ok).collect());
    let p = parse_prompt(&t.prompt, Some(&teacher), &ParserConfig::default()).await.unwrap();
    assert_eq!(p, parse_deterministic(&t.prompt).unwrap());
    assert_eq!(teacher.calls(), 3);

    // A fatal teacher error is not papered over by the fallback.
    let teacher = Scripted::new(vec![Err(TeacherError::BudgetExhausted { limit: 1, used: 1 })]);
    let r = parse_prompt(&t.prompt, Some(&teacher), &ParserConfig::default()).await;
    assert!(matches!(r, Err(ParseError::Teacher(TeacherError::BudgetExhausted { .. }))));
    // No teacher: deterministic in auto mode, an error in LLM mode.
    assert!(parse_prompt(&t.prompt, None, &ParserConfig::default()).await.is_ok());
    assert!(matches!(parse_prompt(&t.prompt, None, &llm).await, Err(ParseError::NoTeacher)));
}

#[tokio::test]
async fn llm_mode_accepts_no_demonstrations() {
    let prompt = "Summarise the given news article in one sentence.";
    let teacher = Scripted::new(vec![Ok(format!(
        r#"{{"Instruction": "{prompt}", "Demonstrations": "N/A"}}"#
    ))]);
    let p = parse_with_teacher(&teacher, prompt, &ParserConfig::default()).await.unwrap();
    assert_eq!(
        p,
        ParsedPrompt {
            instruction: prompt.into(),
            demonstrations: vec![],
            language: Language::English
        }
    );
}

#[tokio::test]
async fn translation_of_a_non_english_instruction() {
    let t = tasks().into_iter().find(|t| t.id == "mconala").unwrap();
    let parsed = parse_deterministic(&t.prompt).unwrap();
    let english = "Generate one line of Python code that solves a Japanese StackOverflow question. Do not include comments or expressions. No import statements are needed.";
    let teacher = Scripted::new(vec![
        Err(TeacherError::Timeout(std::time::Duration::from_secs(1))),
        Ok(format!("```\n{english}\n```")),
    ]);
    let tr = translate_instruction(&teacher, &parsed).await.unwrap();
    assert_eq!(tr.instruction, english);
    assert_eq!(tr.language, Language::English);
    assert_eq!(tr.demonstrations, parsed.demonstrations, "demonstrations stay as they are");
    let asked = teacher.seen.lock().unwrap()[0].messages[0].content.clone();
    assert!(asked.contains("Japanese") && asked.contains(&parsed.instruction));

    // English needs no call.
    let teacher = Scripted::new(vec![]);
    let en = parse_deterministic(&tasks()[0].prompt).unwrap();
    assert_eq!(translate_instruction(&teacher, &en).await.unwrap(), en);
    assert_eq!(teacher.calls(), 0);
}
