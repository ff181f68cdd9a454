//! The dataset generator (Prompt2Model §3.3): synthetic `(input, output)` examples from a parsed
//! prompt through a teacher LLM, following the reference implementation
//! (neulab/prompt2model, `dataset_generator/openai_gpt.py` and `openai_gpt_template.py` as of the
//! paper, summer 2023):
//!
//! - **High-diversity few-shot prompting**: every request shows the user's demonstrations (the
//!   "high-quality examples") plus a random `k ∈ [1, min(accepted, 10)]` previously accepted
//!   generated examples (the "low-quality examples"; `N/A` while there are none); the prompt
//!   template is chosen by `k mod 3` (1 → COMPLEX with 4 meta-examples of other tasks, 2 → MIDDLE
//!   with 3, 0 → SIMPLE with 2), the meta-examples drawn at random from 24; a prompt whose
//!   estimated length reaches the context cutoff (3,500 tokens) is drawn again.
//! - **Temperature annealing**: `T = T0 + (Tmax − T0) · accepted / N`, clipped to [0, 2]
//!   (defaults 0.5 → 1.7; the paper's SQuAD run used 0.3 → 1.4).
//! - Responses are parsed as JSON objects with `input` and `output`, robust to code fences,
//!   prose around the JSON, raw newlines inside strings and cut-off output (every complete object
//!   is recovered); `input="…" output="…"` answers are accepted too.
//! - **Self-consistency filtering**: candidates are grouped by input; each input keeps its most
//!   frequent output (tie → the shortest, then the first seen).
//! - Stops at `N` accepted unique examples. Batches of `min(max_batch_size, ⌈(N − accepted) /
//!   responses_per_request⌉)` requests, `responses_per_request` choices each.
//!
//! Every random choice comes from one seeded [`SplitMix64`], so a run is reproducible: with the
//! same teacher answers (a record/replay cache) it makes exactly the same requests. Progress is
//! journaled to `checkpoint.jsonl` in the output directory after every round (the new candidates,
//! the newly accepted examples, the RNG state and the counters, appended and fsynced); a rerun
//! resumes from it, and together with [`crate::teacher::CachedTeacher`] a run killed at any point
//! repeats no billed call whose answer was recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::prompt_parser::{extract_demonstrations, format_demonstrations, ParsedPrompt};
use crate::teacher::{estimate_tokens, ChatRequest, ChatResponse, SamplingParams, SplitMix64, Teacher, TeacherError, TeacherStats};

/// One `(input, output)` example.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub output: String,
}

impl Example {
    pub fn new(input: impl Into<String>, output: impl Into<String>) -> Self {
        Example { input: input.into(), output: output.into() }
    }
}

/// File names inside the output directory.
pub const EXAMPLES_FILE: &str = "examples.jsonl";
pub const LOG_FILE: &str = "generation_log.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.jsonl";

/// Version of the prompt templates and the request schedule (part of the checkpoint fingerprint).
const ALGORITHM_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// `N`: unique examples wanted.
    pub num_examples: usize,
    pub initial_temperature: f64,
    pub max_temperature: f64,
    /// Choices per request (`n`); reference default 5.
    pub responses_per_request: u32,
    /// Requests per round; reference default 5.
    pub max_batch_size: usize,
    /// Completion-token cap per request; `None`: `context_window − prompt − token_buffer` as the
    /// reference does (it sizes against 4,000 tokens with a 300-token buffer).
    pub max_tokens: Option<u32>,
    pub context_window: u32,
    pub token_buffer: u32,
    /// Prompts whose estimated length reaches this are drawn again (reference: 3,500).
    pub context_cutoff_tokens: u64,
    pub top_p: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// Seed of every random choice (examples shown, templates, meta-examples, request seeds).
    pub seed: u64,
    /// Show previously generated examples in the prompt (the paper's high-diversity few-shot
    /// prompting); `false` is the ablation: the user's demonstrations only.
    pub high_diversity: bool,
    /// Most generated examples shown in one prompt (reference: 10).
    pub max_generated_examples_in_prompt: usize,
    /// Self-consistency filtering (majority output per input); when off every candidate counts.
    pub filter_duplicated_examples: bool,
    /// Drop candidates whose input copies one of the user's demonstrations.
    pub drop_demonstration_copies: bool,
    /// Attempts per request at the generator level, on top of the backend's own retries, for
    /// failures worth repeating ([`TeacherError::is_transient`]: malformed JSON, wrong schema,
    /// empty choices, …). Repeating the same request keeps runs reproducible under faults.
    pub request_attempts: u32,
    /// Stop after this many consecutive rounds in which every request failed.
    pub max_failed_rounds: u32,
    /// Stop after this many consecutive rounds that accept nothing new.
    pub max_rounds_without_progress: u32,
    /// Resume from `checkpoint.jsonl` in the output directory when present.
    pub resume: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            num_examples: 200,
            initial_temperature: 0.5,
            max_temperature: 1.7,
            responses_per_request: 5,
            max_batch_size: 5,
            max_tokens: None,
            context_window: 4000,
            token_buffer: 300,
            context_cutoff_tokens: 3500,
            top_p: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
            high_diversity: true,
            max_generated_examples_in_prompt: 10,
            filter_duplicated_examples: true,
            drop_demonstration_copies: true,
            request_attempts: 3,
            max_failed_rounds: 3,
            max_rounds_without_progress: 50,
            resume: true,
        }
    }
}

impl GeneratorConfig {
    /// The paper's SQuAD run: temperatures 0.3 → 1.4.
    pub fn paper_squad() -> Self {
        GeneratorConfig { initial_temperature: 0.3, max_temperature: 1.4, ..Default::default() }
    }

    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: &str| Err(GenerateError::Config(m.to_string()));
        if self.num_examples == 0 {
            return bad("num_examples must be > 0");
        }
        if !(0.0..=2.0).contains(&self.initial_temperature) || !(0.0..=2.0).contains(&self.max_temperature) {
            return bad("temperatures must lie in [0, 2]");
        }
        if self.initial_temperature > self.max_temperature {
            return bad("initial_temperature must be ≤ max_temperature");
        }
        if self.responses_per_request == 0 || self.max_batch_size == 0 {
            return bad("responses_per_request and max_batch_size must be > 0");
        }
        if self.request_attempts == 0 {
            return bad("request_attempts must be > 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must lie in (0, 1]");
        }
        Ok(())
    }

    /// The annealed temperature after `accepted` of `n` examples.
    pub fn temperature(&self, accepted: usize, n: usize) -> f64 {
        let t = self.initial_temperature + (self.max_temperature - self.initial_temperature) * accepted as f64 / n.max(1) as f64;
        t.clamp(0.0, 2.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Log

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemperaturePoint {
    pub round: u64,
    /// Accepted examples when the round started.
    pub accepted: usize,
    pub temperature: f64,
    pub requests: usize,
}

/// What a generation did, cumulative over resumed runs; serialises to JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationLog {
    pub backend: String,
    pub model: String,
    pub target: usize,
    pub rounds: u64,
    /// Requests sent by the generator (generator-level retries included).
    pub requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Responses replayed from a cache (not billed).
    pub cached_responses: u64,
    pub choices: u64,
    /// Choices cut off by the token limit (`finish_reason = length`).
    pub truncated_choices: u64,
    /// Parsed `(input, output)` candidates.
    pub candidates: u64,
    /// Choices that yielded no candidate, and dropped candidates, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Candidates whose input had been generated before.
    pub duplicate_inputs: u64,
    /// Inputs seen with more than one distinct output (resolved by self-consistency).
    pub conflicting_inputs: u64,
    pub accepted: u64,
    /// Prompt templates used (SIMPLE / MIDDLE / COMPLEX).
    pub templates: BTreeMap<String, u64>,
    pub temperature_curve: Vec<TemperaturePoint>,
    /// Billed tokens and cost (cache replays excluded).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub cached_prompt_tokens: u64,
    pub cached_completion_tokens: u64,
    pub runs: u32,
    pub resumed_from_round: Option<u64>,
    pub complete: bool,
    pub stop_reason: Option<String>,
    /// Wall-clock seconds over every run of this generation (a resumed run adds to the journal's).
    pub elapsed_secs: f64,
    /// The teacher's own counters at the end of the latest run.
    pub teacher_stats: TeacherStats,
}

impl GenerationLog {
    fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
        *map.entry(key.to_string()).or_default() += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a generation stopped before `N` examples. Everything accepted so far is in
/// `examples` (and checkpointed; a rerun resumes from it).
#[derive(Debug, thiserror::Error)]
#[error("generation stopped at {} of {target} examples: {reason}. The accepted examples are checkpointed in {} (and written to {EXAMPLES_FILE}); rerun to resume from them", examples.len(), checkpoint.display())]
pub struct Stopped {
    pub reason: String,
    #[source]
    pub source: Option<TeacherError>,
    pub target: usize,
    pub checkpoint: PathBuf,
    pub examples: Vec<Example>,
    pub log: GenerationLog,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid generator configuration: {0}")]
    Config(String),
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Stopped(Box<Stopped>),
}

impl GenerateError {
    /// True when the run ended because the API-call budget ran out.
    pub fn is_budget_exhausted(&self) -> bool {
        matches!(self, GenerateError::Stopped(s) if matches!(s.source, Some(TeacherError::BudgetExhausted { .. })))
    }

    /// The partial result of a stopped run.
    pub fn partial(&self) -> Option<(&[Example], &GenerationLog)> {
        match self {
            GenerateError::Stopped(s) => Some((&s.examples, &s.log)),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------------------------
// Prompt templates (the reference's, as of the paper; typos included on purpose)

const META_PROMPT: &str = "\nAs a DatasetGenerator, your task is to generate a new example (`input` and `output`) based on the [new instruction] and [few-shot examples]. Please provide a JSON dictionary response that includes the new `input` and its corresponding `output`. Use the `input` and `output` keys in the dictionary. The 'input' field should be marked as 'N/A' if the instruction doesn't require additional input.\n\nTry you best to ensure that the input and output you generate are distinct from the provided examples while maintaining a diverse, detailed, precise, comprehensive, and high-quality response.\n\nAvoid generate examples that are the same to the provided examples.\n";

const RULE_92: &str = "--------------------------------------------------------------------------------------------";
const RULE_93: &str = "---------------------------------------------------------------------------------------------";

/// The 24 meta-examples of other tasks (Apache-2.0, neulab/prompt2model, paper-time version).
const META_EXAMPLES: [&str; 24] = [
    r#"instruction: I am learning Japanese. Please translate some Japanese sentences to English.
input="その日、人類は思い出した。ヤツらに支配されていた恐怖を鳥籠の中に囚われていた屈辱を"
output="On that day, humanity remembered the fear of being dominated by them and the humiliation of being trapped in a birdcage.""#,
    r#"instruction: As a programer, I am learning software development. Here are some of my problems.
input="What is CI/CD?"
output="CI/CD is a way to automate and speed up software development by continuously integrating code changes and deploying them quickly and reliably.""#,
    r#"instruction: 来到美国后，我需要学习如何自己做饭。你能告诉我一些菜需要准备的原料么？
input="青椒肉丝炒肉"
output="瘦肉、青椒、调味料（如大蒜、姜、料酒、生抽、盐、糖、鸡精或味精、胡椒粉）、植物油。""#,
    r#"instruction: Classify the sentiment of the sentence into positive, negative, or mixed.
input="I enjoy the flavor of the restaurant but their service is too slow."
output="mixed""#,
    r#"instruction: Given a dialogue, classify whether the user is satisfied with the service. You should respond with "Satisfied" or "Unsatisfied".
input="
- Agent: Thank you for your feedback. We will work to improve our service in the future.
- Customer: I am happy with the service you provided. Thank you for your help.
"
output="Satisfied""#,
    r#"instruction: Tell me if the following email is a promotion email or not. If the email is a promotion email, output Promotion. Otherwise, output Not Promotion.
input="We hope you are doing well. Let us know if you need any help.."
output="Not Promotion""#,
    r#"instruction: Detect if the Reddit thread contains hate speech. If the thread contains hate speech, output True. Otherwise, output False.
input="All people of color are stupid and should not be allowed to vote."
output="True""#,
    r#"instruction: Does the information in the document supports the claim? You can answer "Support" or "Unsupport".
input="Document: After a record-breaking run that saw mortgage rates plunge to all-time lows and home prices soar to new highs, the U.S. housing market finally is slowing. While demand and price gains are cooling, any correction is likely to be a modest one, housing economists and analysts say. No one expects price drops on the scale of the declines experienced during the Great Recession. Claim: The US housing market is going to crash soon."
output="Support""#,
    r#"instruction: You need to read a code and detect if there is a syntax error or not. Output true if there is an error, output false if there is not.
input="
def calculate_average(numbers):
    total = 0
    for number in numbers:
        total += number
    return total / len(numbers)
"
output="true""#,
    r#"instruction: You are provided with a news article, and you need to identify all the categories that this article belongs to. Possible categories include Sports and Politics. Output its categories one by one, separated by a comma.
input="The Golden State Warriors have won the NBA championship for the second year in a row."
output="Sports, Politics""#,
    r#"instruction: Tell me what's the second largest city by population in Canada.
input="N/A"
output="Montreal""#,
    r#"instruction: Classifying different types of mathematical equations, such as linear, and quadratic equations, based on the coefficients and terms in the equation.
input="y = x^2 - 4x + 3"
output="Quadratic equation""#,
    r#"instruction: Tell me the first number of the given list.
input="[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
output="1""#,
    r#"instruction: Which exercises are best for reducing belly fat at home?
input="N/A"
output="
- Lying Leg Raises
- Leg In And Out
- Plank
- Side Plank
- Sit-ups
""#,
    r#"instruction: Extract all the country names in the paragraph, and list them separated by commas.
input="Dr. No is the sixth novel by the English author Ian Fleming to feature his British Secret Service agent James Bond. Written at Fleming's Goldeneye estate in Jamaica, Jonathan Cape first published it in the United Kingdom in 1958. In the novel Bond looks into the disappearance in Jamaica of two fellow MI6 operatives who had been investigating Doctor No. Bond travels to No's Caribbean island and meets Honeychile Rider, who is there to collect shells. They are captured and taken to a luxurious facility carved into a mountain. The character of Doctor No, the son of a German missionary and a Chinese woman, was influenced by Sax Rohmer's Fu Manchu stories. Dr. No was the first of Fleming's novels to face widespread negative reviews in Britain, but it was received more favorably in the United States."
output="English, British, Jamaica, the United Kingdom, German, Chinese, Britain, the United States.""#,
    r#"instruction: Converting 85 F to Celsius.
input="N/A"
output="85°F = 29.44°C""#,
    r#"instruction: Sort the given list ascendingly.
input="[10, 92, 2, 5, -4, 92, 5, 101]"
output="[-4, 2, 5, 5, 10, 92, 92, 101]""#,
    r#"instruction: Suggest a better and more professional rephrasing of the following sentence.
input="This house is surprisingly not constructed very well, and you probably need more money to fix it after you buy it. If you ask me, I would suggest you consider other candidates."
output="This house does not seem to be constructed well, so you may need to spend more money to fix it after you purchase it. I would suggest that you look at other properties.""#,
    r#"instruction: Read the following paragraph and answer a math question about the paragraph. You need to write out the calculation to get the final answer.
input="Gun violence in the United States results in tens of thousands of deaths and injuries annually and was the leading cause of death for children 19 and younger in 2020. In 2018, the most recent year for which data are available as of 2021, the Centers for Disease Control and Prevention's (CDC) National Center for Health Statistics reports 38,390 deaths by firearm, of which 24,432 were by suicide. The rate of firearm deaths per 100,000 people rose from 10.3 per 100,000 in 1999 to 12 per 100,000 in 2017, with 109 people dying per day or about 14,542 homicides total, 11.9 per 100,000 in 2018. In 2010, there were 19,392 firearm-related suicides and 11,078 firearm-related homicides in the U.S. In 2010, 358 murders were reported involving a rifle, while 6,009 were reported involving a handgun; another 1,939 were reported with an unspecified type of firearm. In 2011, a total of 478,400 fatal and nonfatal violent crimes were committed with a firearm. How many more firearm-related deaths were there in 2018 compared to 2010?"
output="38390 - (19392 + 11078) = 38390 - 30470 = 7920. So, in 2018, there were 7920 more deaths by firearm than in 2010.""#,
    r#"instruction: Write Python code to solve this leet code problem.
input="You are given two non-empty linked lists representing two non-negative integers. The digits are stored in reverse order, and each of their nodes contains a single digit. Add the two numbers and return the sum as a linked list. You may assume the two numbers do not contain any leading zero except the number 0 itself."
output="
class Solution(object):
    def addTwoNumbers(self, l1, l2):
        carry = 0
        root = n = ListNode(0)
        while l1 or l2 or carry:
            v1 = v2 = 0
            if l1:
                v1 = l1.val
                l1 = l1.next
            if l2:
                v2 = l2.val
                l2 = l2.next
            carry, val = divmod(v1+v2+carry, 10)
            n.next = ListNode(val)
            n = n.next
        return root.next
""#,
    r#"instruction: Solve the equation and find the value of X. Show your steps.
input="10X + 5 = 10"
output="10X = 5,  X = 0.5""#,
    r#"instruction: Write a program to compute the sum of integers from k to n.
input="N/A"
output="
def sum(k, n):
    sum = 0
    for i in range(k, n+1):
        sum += i
    return sum
    ""#,
    r#"instruction: Select the oldest person from the given list.
input="George Washington, Confucius, Michael Jordan, Michelangelo"
output="Confucious""#,
    r#"instruction: Turn down a job offer by sending an email to a recruiter explaining the reason.
input="N/A"
output="Hi  Recruiter,
Thank you so much for the generous offer to join your team. As we discussed, I've admired the company for a number of years, and am a proud endorser of its products. However, after further consideration of where I currently am in my career, I've decided to accept an offer at another company.
I would love to stay in touch with you and have already started following you on [Social Media Platform]. Again, thank you so much for your time and consideration.
Thanks again,
Your Name""#,
];

/// The three templates of the reference differ only in how many meta-examples they show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    Simple,
    Middle,
    Complex,
}

impl Template {
    /// The reference's choice: `{1: COMPLEX, 2: MIDDLE, 0: SIMPLE}[k % 3]`.
    pub fn for_k(k: usize) -> Template {
        match k % 3 {
            1 => Template::Complex,
            2 => Template::Middle,
            _ => Template::Simple,
        }
    }
    pub fn meta_examples(self) -> usize {
        match self {
            Template::Simple => 2,
            Template::Middle => 3,
            Template::Complex => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Template::Simple => "SIMPLE",
            Template::Middle => "MIDDLE",
            Template::Complex => "COMPLEX",
        }
    }
}

/// Fill a template: `meta` are the meta-examples shown (2–4).
pub fn render_prompt(template: Template, meta: &[&str], instruction: &str, high_quality: &str, low_quality: &str) -> String {
    let mut s = String::with_capacity(4096);
    s.push('\n');
    s.push_str(META_PROMPT);
    s.push('\n');
    s.push_str(RULE_92);
    s.push_str("\nHere are some exmaples you can refer to:\n\n");
    let shown = &meta[..template.meta_examples().min(meta.len())];
    for (i, ex) in shown.iter().enumerate() {
        if i > 0 {
            s.push_str("\n\n");
        }
        s.push_str(&format!("- Example {}\n\n{ex}", i + 1));
    }
    s.push('\n');
    s.push_str(RULE_92);
    s.push_str("\nHere is the requirement for the generation of a new example:\n\n[new instruction]:\n");
    s.push_str(instruction);
    s.push('\n');
    s.push_str(RULE_93);
    s.push_str("\nHere are some [high-quality examples] for the [new instruction]. These examples can provide you with very strict format requirements. You should pay extreme attention to them!!!\n\n[high-equality examples]:\n");
    s.push_str(high_quality);
    s.push('\n');
    s.push_str(RULE_93);
    s.push_str("\nThese are some [low-quality examples]. Their formats and contents may not be accurate. Please strictly follow the format of the [high-quality examples], but you may also refer to the content of the [low-quality examples].\n\n[low-quality examples]:\n");
    s.push_str(low_quality);
    s.push('\n');
    s.push_str(RULE_93);
    s.push_str("\n[new example (in JSON)]:");
    s
}

/// One constructed generation prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltPrompt {
    pub text: String,
    /// Generated examples shown.
    pub k: usize,
    pub template: Template,
}

/// Build one prompt (reference `construct_prompt`), drawing everything from `rng`.
pub fn build_prompt(
    rng: &mut SplitMix64,
    instruction: &str,
    high_quality: &str,
    generated: &[Example],
    cfg: &GeneratorConfig,
) -> BuiltPrompt {
    let mut tries = 0;
    loop {
        tries += 1;
        let use_generated = cfg.high_diversity && !generated.is_empty() && tries <= 20;
        let (k, low) = if use_generated {
            let k = rng.range_inclusive(1, generated.len().min(cfg.max_generated_examples_in_prompt.max(1)));
            let mut shown: Vec<String> = rng
                .sample_indices(generated.len(), k)
                .into_iter()
                .map(|i| format!("input=\"{}\"\noutput=\"{}\"\n", generated[i].input, generated[i].output))
                .collect();
            rng.shuffle(&mut shown);
            (k, shown.join("\n"))
        } else {
            (0, "N/A\n".to_string())
        };
        let template = Template::for_k(k);
        let meta: Vec<&str> = rng.sample_indices(META_EXAMPLES.len(), 4).into_iter().map(|i| META_EXAMPLES[i]).collect();
        let text = render_prompt(template, &meta, instruction, high_quality, &low);
        if estimate_tokens(&text) < cfg.context_cutoff_tokens || tries > 20 {
            if tries > 20 {
                tracing::warn!("the prompt stays above {} estimated tokens; consider a shorter prompt", cfg.context_cutoff_tokens);
            }
            return BuiltPrompt { text, k, template };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing responses

/// What one choice yielded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extraction {
    pub examples: Vec<Example>,
    /// Why the choice yielded nothing (`None` when it yielded examples).
    pub rejected: Option<&'static str>,
}

/// Parse one teacher answer into examples: every complete JSON object with `input` and `output`
/// (nested objects and arrays searched too), tolerant of code fences, prose, raw control
/// characters inside strings and cut-off output; `input="…" output="…"` as a fallback.
pub fn extract_examples(text: &str) -> Extraction {
    let mut examples = Vec::new();
    let mut saw_object = false;
    let mut saw_keys_empty = false;
    let mut saw_invalid = false;
    let mut saw_unbalanced = false;
    for item in json_objects(text) {
        match item {
            Scanned::Value(v) => {
                saw_object = true;
                collect_examples(&v, &mut examples, &mut saw_keys_empty);
            }
            Scanned::Invalid => saw_invalid = true,
            Scanned::Unbalanced => saw_unbalanced = true,
        }
    }
    if examples.is_empty() && !saw_object {
        for e in extract_demonstrations(text).examples {
            if e.input.trim().is_empty() || e.output.trim().is_empty() {
                saw_keys_empty = true;
            } else {
                examples.push(Example::new(e.input.trim(), e.output.trim()));
            }
        }
    }
    let rejected = if !examples.is_empty() {
        None
    } else if saw_keys_empty {
        Some("empty_field")
    } else if saw_object {
        Some("missing_keys")
    } else if saw_unbalanced {
        Some("truncated_json")
    } else if saw_invalid {
        Some("invalid_json")
    } else {
        Some("no_json")
    };
    Extraction { examples, rejected }
}

enum Scanned {
    Value(Value),
    Invalid,
    Unbalanced,
}

/// Balanced `{…}` spans (strings and escapes respected) parsed leniently; after a span that
/// does not parse, or one that never closes, scanning continues inside it.
fn json_objects(text: &str) -> Vec<Scanned> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        match balanced_end(b, i) {
            Some(end) => match parse_lenient(&text[i..=end]) {
                Some(v) => {
                    out.push(Scanned::Value(v));
                    i = end + 1;
                }
                None => {
                    out.push(Scanned::Invalid);
                    i += 1;
                }
            },
            None => {
                out.push(Scanned::Unbalanced);
                i += 1;
            }
        }
    }
    out
}

/// Every complete JSON object found in `text` (the scan of [`extract_examples`]).
pub(crate) fn json_values(text: &str) -> Vec<Value> {
    json_objects(text)
        .into_iter()
        .filter_map(|s| match s {
            Scanned::Value(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn balanced_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for (j, &c) in b.iter().enumerate().skip(start) {
        if in_str {
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_lenient(s: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Some(v);
    }
    // Models often put raw newlines/tabs inside strings, and trailing commas.
    let mut fixed = String::with_capacity(s.len() + 16);
    let mut in_str = false;
    let mut esc = false;
    for c in s.chars() {
        if in_str {
            if esc {
                esc = false;
                fixed.push(c);
                continue;
            }
            match c {
                '\\' => {
                    esc = true;
                    fixed.push(c);
                }
                '"' => {
                    in_str = false;
                    fixed.push(c);
                }
                '\n' => fixed.push_str("\\n"),
                '\r' => fixed.push_str("\\r"),
                '\t' => fixed.push_str("\\t"),
                c if (c as u32) < 0x20 => fixed.push_str(&format!("\\u{:04x}", c as u32)),
                c => fixed.push(c),
            }
        } else {
            if c == '"' {
                in_str = true;
            }
            if c == '}' || c == ']' {
                // drop a trailing comma before a closing bracket
                let trimmed = fixed.trim_end().len();
                if fixed[..trimmed].ends_with(',') {
                    fixed.truncate(trimmed - 1);
                }
            }
            fixed.push(c);
        }
    }
    serde_json::from_str::<Value>(&fixed).ok()
}

fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).or_else(|| m.iter().find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        Value::Number(_) | Value::Bool(_) => v.to_string(),
        other => other.to_string(),
    }
}

fn collect_examples(v: &Value, out: &mut Vec<Example>, saw_empty: &mut bool) {
    match v {
        Value::Object(m) => {
            if let (Some(i), Some(o)) = (field(m, "input"), field(m, "output")) {
                let (i, o) = (value_text(i), value_text(o));
                if i.is_empty() || o.is_empty() {
                    *saw_empty = true;
                } else {
                    out.push(Example { input: i, output: o });
                }
                return;
            }
            for x in m.values() {
                collect_examples(x, out, saw_empty);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_examples(x, out, saw_empty);
            }
        }
        _ => {}
    }
}

/// Self-consistency filtering: one example per distinct input, in first-seen order, with the
/// input's most frequent output (tie → the shortest in characters, then the first seen).
/// Returns the examples and the number of inputs that had conflicting outputs.
pub fn self_consistency(candidates: &[Example]) -> (Vec<Example>, usize) {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<(&str, usize)>> = HashMap::new();
    for c in candidates {
        let g = groups.entry(c.input.as_str()).or_insert_with(|| {
            order.push(c.input.as_str());
            Vec::new()
        });
        match g.iter_mut().find(|(o, _)| *o == c.output) {
            Some((_, n)) => *n += 1,
            None => g.push((c.output.as_str(), 1)),
        }
    }
    let mut conflicts = 0;
    let out = order
        .into_iter()
        .map(|input| {
            let g = &groups[input];
            if g.len() > 1 {
                conflicts += 1;
            }
            let best = g.iter().fold(None::<(&str, usize)>, |best, &(o, n)| match best {
                None => Some((o, n)),
                Some((bo, bn)) => {
                    if n > bn || (n == bn && o.chars().count() < bo.chars().count()) {
                        Some((o, n))
                    } else {
                        Some((bo, bn))
                    }
                }
            });
            Example { input: input.to_string(), output: best.expect("non-empty group").0.to_string() }
        })
        .collect();
    (out, conflicts)
}

// ---------------------------------------------------------------------------------------------
// Checkpoint journal

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum JournalLine {
    Header { version: u32, fingerprint: String, backend: String, model: String },
    Round(Box<RoundRecord>),
}

#[derive(Debug, Serialize, Deserialize)]
struct RoundRecord {
    round: u64,
    /// RNG state after the round.
    rng: u64,
    point: TemperaturePoint,
    /// Candidates parsed in this round, in order.
    candidates: Vec<Example>,
    /// Inputs accepted for the first time in this round (with their current outputs).
    new_accepted: Vec<Example>,
    accepted_total: usize,
    /// Cumulative counters after the round (temperature curve left out; rebuilt from `point`s).
    log: GenerationLog,
}

struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    fn append(&mut self, line: &JournalLine) -> Result<(), GenerateError> {
        let mut s = serde_json::to_string(line).expect("serialisable");
        s.push('\n');
        self.file.write_all(s.as_bytes()).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
    }

    fn create(path: &Path, header: &JournalLine) -> Result<Journal, GenerateError> {
        let file = std::fs::File::create(path).map_err(io_err(path))?;
        let mut j = Journal { path: path.to_path_buf(), file };
        j.append(header)?;
        Ok(j)
    }

    /// Read a journal: its lines and the byte length of the valid prefix (a torn last line, from
    /// a kill during a write, is dropped).
    fn read(path: &Path) -> Result<(Vec<JournalLine>, u64), GenerateError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let mut lines = Vec::new();
        let mut good = 0usize;
        let mut pos = 0usize;
        let chunks: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, chunk) in chunks.iter().enumerate() {
            pos += chunk.len();
            let last = i + 1 == chunks.len();
            if !chunk.ends_with('\n') {
                break; // torn write
            }
            match serde_json::from_str::<JournalLine>(chunk.trim_end()) {
                Ok(l) => {
                    lines.push(l);
                    good = pos;
                }
                Err(_) if last => break,
                Err(e) => {
                    return Err(GenerateError::Checkpoint { path: path.to_path_buf(), detail: format!("line {} is corrupt: {e}", i + 1) });
                }
            }
        }
        Ok((lines, good as u64))
    }

    fn reopen(path: &Path, valid_len: u64) -> Result<Journal, GenerateError> {
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
        file.set_len(valid_len).map_err(io_err(path))?;
        drop(file);
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(io_err(path))?;
        Ok(Journal { path: path.to_path_buf(), file })
    }
}

fn fingerprint(teacher: &dyn Teacher, prompt: &ParsedPrompt, cfg: &GeneratorConfig) -> String {
    let v = serde_json::json!({
        "algorithm": ALGORITHM_VERSION,
        "backend": teacher.backend(),
        "model": teacher.model(),
        "instruction": prompt.instruction,
        "demonstrations": prompt.demonstrations,
        "seed": cfg.seed,
        "t0": cfg.initial_temperature,
        "tmax": cfg.max_temperature,
        "n_choices": cfg.responses_per_request,
        "batch": cfg.max_batch_size,
        "max_tokens": cfg.max_tokens,
        "context_window": cfg.context_window,
        "token_buffer": cfg.token_buffer,
        "cutoff": cfg.context_cutoff_tokens,
        "top_p": cfg.top_p,
        "presence": cfg.presence_penalty,
        "frequency": cfg.frequency_penalty,
        "high_diversity": cfg.high_diversity,
        "max_shown": cfg.max_generated_examples_in_prompt,
        "filter": cfg.filter_duplicated_examples,
        "drop_copies": cfg.drop_demonstration_copies,
    });
    hex::encode(Sha256::digest(crate::teacher::cache::canonical_json(&v).as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// The generation loop

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopAt {
    /// `n` unique accepted examples.
    Unique(usize),
    /// `n` raw candidates (the diversity experiment).
    Raw(usize),
}

struct Core<'a> {
    teacher: &'a dyn Teacher,
    cfg: &'a GeneratorConfig,
    instruction: &'a str,
    high_quality: String,
    demo_inputs: HashSet<String>,
    rng: SplitMix64,
    round: u64,
    candidates: Vec<Example>,
    seen_inputs: HashSet<String>,
    accepted: Vec<Example>,
    log: GenerationLog,
    /// Seconds spent by earlier runs of a resumed generation (from the journal).
    elapsed_before: f64,
    started: Instant,
}

enum RoundEnd {
    Continue,
    Stop { reason: String, source: Option<TeacherError> },
}

impl<'a> Core<'a> {
    fn new(teacher: &'a dyn Teacher, prompt: &'a ParsedPrompt, cfg: &'a GeneratorConfig, target: usize) -> Self {
        let high_quality = if prompt.demonstrations.is_empty() { "N/A".to_string() } else { format_demonstrations(&prompt.demonstrations) };
        Core {
            teacher,
            cfg,
            instruction: &prompt.instruction,
            high_quality,
            demo_inputs: prompt.demonstrations.iter().map(|d| d.input.trim().to_string()).collect(),
            rng: SplitMix64::new(cfg.seed),
            round: 0,
            candidates: Vec::new(),
            seen_inputs: HashSet::new(),
            accepted: Vec::new(),
            log: GenerationLog { backend: teacher.backend().to_string(), model: teacher.model().to_string(), target, ..Default::default() },
            elapsed_before: 0.0,
            started: Instant::now(),
        }
    }

    /// Wall-clock seconds of the whole generation: earlier runs plus this one.
    fn elapsed(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    fn revote(&mut self) {
        if self.cfg.filter_duplicated_examples {
            let (acc, conflicts) = self_consistency(&self.candidates);
            self.accepted = acc;
            self.log.conflicting_inputs = conflicts as u64;
        } else {
            self.accepted = self.candidates.clone();
        }
        self.log.accepted = self.accepted.len() as u64;
    }

    /// Restore from journal round records.
    fn restore(&mut self, rounds: Vec<RoundRecord>) {
        let mut curve = Vec::new();
        for r in rounds {
            for c in &r.candidates {
                self.seen_inputs.insert(c.input.clone());
            }
            self.candidates.extend(r.candidates);
            self.rng = SplitMix64::new(r.rng);
            self.round = r.round + 1;
            curve.push(r.point);
            self.log = r.log;
        }
        self.elapsed_before = self.log.elapsed_secs;
        self.log.temperature_curve = curve;
        self.revote();
    }

    fn max_tokens_for(&self, prompt: &str) -> u32 {
        match self.cfg.max_tokens {
            Some(m) => m,
            None => {
                let est = estimate_tokens(prompt) as i64;
                (self.cfg.context_window as i64 - est - self.cfg.token_buffer as i64).max(64) as u32
            }
        }
    }

    /// Send a batch; transient failures are sent again (same requests) up to
    /// `request_attempts` times. Returns the final results and the kinds of the failures that
    /// were retried.
    async fn send(&self, reqs: &[ChatRequest]) -> (Vec<Result<ChatResponse, TeacherError>>, Vec<&'static str>) {
        let mut retried = Vec::new();
        let mut results: Vec<Option<Result<ChatResponse, TeacherError>>> =
            self.teacher.chat_batch(reqs).await.into_iter().map(Some).collect();
        for _ in 1..self.cfg.request_attempts {
            if results.iter().any(|r| matches!(r, Some(Err(e)) if e.is_fatal())) {
                break;
            }
            let retry: Vec<usize> =
                results.iter().enumerate().filter(|(_, r)| matches!(r, Some(Err(e)) if e.is_transient())).map(|(i, _)| i).collect();
            if retry.is_empty() {
                break;
            }
            let sub: Vec<ChatRequest> = retry.iter().map(|&i| reqs[i].clone()).collect();
            let again = self.teacher.chat_batch(&sub).await;
            for (&i, r) in retry.iter().zip(again) {
                if let Some(Err(e)) = &results[i] {
                    tracing::debug!(request = i, error = %e, "sending a failed generation request again");
                    retried.push(e.kind());
                }
                results[i] = Some(r);
            }
        }
        (results.into_iter().map(|r| r.expect("filled")).collect(), retried)
    }

    async fn round(&mut self, stop: StopAt) -> (RoundEnd, RoundRecord) {
        let (have, n) = match stop {
            StopAt::Unique(n) => (self.accepted.len(), n),
            StopAt::Raw(n) => (self.candidates.len(), n),
        };
        let per_req = self.cfg.responses_per_request as usize;
        let batch = self.cfg.max_batch_size.min((n - have).div_ceil(per_req)).max(1);
        let temperature = self.cfg.temperature(have, n);
        let point = TemperaturePoint { round: self.round, accepted: have, temperature, requests: batch };
        let mut reqs = Vec::with_capacity(batch);
        for _ in 0..batch {
            let p = build_prompt(&mut self.rng, self.instruction, &self.high_quality, &self.accepted, self.cfg);
            GenerationLog::bump(&mut self.log.templates, p.template.name());
            let seed = self.rng.next_u64() >> 33; // < 2^31: accepted by every server
            let params = SamplingParams {
                temperature,
                top_p: self.cfg.top_p,
                max_tokens: Some(self.max_tokens_for(&p.text)),
                n: self.cfg.responses_per_request,
                seed: Some(seed),
                presence_penalty: self.cfg.presence_penalty,
                frequency_penalty: self.cfg.frequency_penalty,
                json_fields: Some(vec!["input".into(), "output".into()]),
            };
            reqs.push(ChatRequest::user(p.text, params));
        }

        let (results, retried) = self.send(&reqs).await;
        for kind in retried {
            self.log.requests += 1;
            self.log.failed_requests += 1;
            GenerationLog::bump(&mut self.log.errors, kind);
        }
        let before: HashSet<String> = self.accepted.iter().map(|e| e.input.clone()).collect();
        let mut new_candidates = Vec::new();
        let mut fatal: Option<TeacherError> = None;
        let mut last_error: Option<TeacherError> = None;
        let mut successes = 0;
        for r in results {
            self.log.requests += 1;
            match r {
                Ok(resp) => {
                    successes += 1;
                    self.log.successful_requests += 1;
                    if resp.cached {
                        self.log.cached_responses += 1;
                        self.log.cached_prompt_tokens += resp.usage.prompt_tokens;
                        self.log.cached_completion_tokens += resp.usage.completion_tokens;
                    } else {
                        self.log.prompt_tokens += resp.usage.prompt_tokens;
                        self.log.completion_tokens += resp.usage.completion_tokens;
                        self.log.cost_usd += resp.cost_usd;
                    }
                    for choice in resp.choices {
                        self.log.choices += 1;
                        if choice.finish_reason.as_deref() == Some("length") {
                            self.log.truncated_choices += 1;
                        }
                        let ex = extract_examples(&choice.content);
                        if let Some(reason) = ex.rejected {
                            GenerationLog::bump(&mut self.log.rejected, reason);
                        }
                        for e in ex.examples {
                            if self.cfg.drop_demonstration_copies && self.demo_inputs.contains(e.input.trim()) {
                                GenerationLog::bump(&mut self.log.rejected, "copies_demonstration");
                                continue;
                            }
                            self.log.candidates += 1;
                            if !self.seen_inputs.insert(e.input.clone()) {
                                self.log.duplicate_inputs += 1;
                            }
                            new_candidates.push(e);
                        }
                    }
                }
                Err(e) => {
                    self.log.failed_requests += 1;
                    GenerationLog::bump(&mut self.log.errors, e.kind());
                    if e.is_fatal() {
                        if fatal.is_none() {
                            fatal = Some(e);
                        }
                    } else {
                        last_error = Some(e);
                    }
                }
            }
        }
        self.candidates.extend(new_candidates.iter().cloned());
        self.revote();
        self.log.rounds += 1;
        self.log.elapsed_secs = self.elapsed();
        self.log.temperature_curve.push(point.clone());
        let new_accepted: Vec<Example> = self.accepted.iter().filter(|e| !before.contains(&e.input)).cloned().collect();
        let record = RoundRecord {
            round: self.round,
            rng: self.rng.state,
            point,
            candidates: new_candidates,
            new_accepted,
            accepted_total: self.accepted.len(),
            log: GenerationLog { temperature_curve: Vec::new(), ..self.log.clone() },
        };
        self.round += 1;
        let end = match (fatal, successes) {
            (Some(e), _) => RoundEnd::Stop { reason: e.to_string(), source: Some(e) },
            (None, 0) => RoundEnd::Stop { reason: String::new(), source: last_error },
            _ => RoundEnd::Continue,
        };
        (end, record)
    }

    /// Run rounds until `stop`; `journal` gets every round.
    async fn run(
        &mut self,
        stop: StopAt,
        mut journal: Option<&mut Journal>,
        progress: Option<&ProgressBar>,
    ) -> Result<Option<(String, Option<TeacherError>)>, GenerateError> {
        let mut failed_rounds = 0u32;
        let mut stalled = 0u32;
        loop {
            let (have, n) = match stop {
                StopAt::Unique(n) => (self.accepted.len(), n),
                StopAt::Raw(n) => (self.candidates.len(), n),
            };
            if let Some(pb) = progress {
                pb.set_position(have.min(n) as u64);
            }
            if have >= n {
                return Ok(None);
            }
            let (end, record) = self.round(stop).await;
            let grew = match stop {
                StopAt::Unique(_) => record.accepted_total > have,
                StopAt::Raw(_) => !record.candidates.is_empty(),
            };
            if let Some(j) = journal.as_deref_mut() {
                j.append(&JournalLine::Round(Box::new(record)))?;
            }
            if let Some(pb) = progress {
                pb.set_message(format!(
                    "T={:.2} requests={} cached={} rejected={}",
                    self.cfg.temperature(have, n),
                    self.log.requests,
                    self.log.cached_responses,
                    self.log.rejected.values().sum::<u64>()
                ));
            }
            match end {
                RoundEnd::Stop { reason, source: Some(e) } if e.is_fatal() => return Ok(Some((reason, Some(e)))),
                RoundEnd::Stop { source, .. } => {
                    failed_rounds += 1;
                    if failed_rounds >= self.cfg.max_failed_rounds {
                        let reason = match &source {
                            Some(e) => format!("{failed_rounds} consecutive rounds failed entirely; last error: {e}"),
                            None => format!("{failed_rounds} consecutive rounds failed entirely"),
                        };
                        return Ok(Some((reason, source)));
                    }
                }
                RoundEnd::Continue => failed_rounds = 0,
            }
            if grew {
                stalled = 0;
            } else {
                stalled += 1;
                if stalled >= self.cfg.max_rounds_without_progress {
                    return Ok(Some((format!("no new example in {stalled} consecutive rounds"), None)));
                }
            }
        }
    }
}

/// A progress bar for `n` examples, as the CLI shows it.
pub fn default_progress_bar(n: usize) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    if let Ok(style) = ProgressStyle::with_template("{spinner} generating [{bar:30}] {pos}/{len} examples {msg} ({elapsed})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Examples as JSON lines `{"input": …, "output": …}`, written atomically.
pub fn write_examples_jsonl(path: &Path, examples: &[Example]) -> std::io::Result<()> {
    let mut s = String::new();
    for e in examples {
        s.push_str(&serde_json::to_string(e).expect("serialisable"));
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// Read examples written by [`write_examples_jsonl`].
pub fn read_examples_jsonl(path: &Path) -> std::io::Result<Vec<Example>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
        .collect()
}

/// Generate `cfg.num_examples` examples for `prompt` with `teacher`, writing
/// `out_dir/examples.jsonl`, `out_dir/generation_log.json` and the journal
/// `out_dir/checkpoint.jsonl` (resumed from when present and `cfg.resume`).
///
/// When the run cannot finish (budget exhausted, replay-only miss, persistent failures) it
/// returns [`GenerateError::Stopped`] carrying every example accepted so far (also written to
/// `examples.jsonl` and kept in the checkpoint).
pub async fn generate(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    cfg: &GeneratorConfig,
    out_dir: &Path,
    progress: Option<&ProgressBar>,
) -> Result<(Vec<Example>, GenerationLog), GenerateError> {
    cfg.validate()?;
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let n = cfg.num_examples;
    let checkpoint = out_dir.join(CHECKPOINT_FILE);
    let fp = fingerprint(teacher, prompt, cfg);
    let header = JournalLine::Header {
        version: ALGORITHM_VERSION,
        fingerprint: fp.clone(),
        backend: teacher.backend().into(),
        model: teacher.model().into(),
    };

    let mut core = Core::new(teacher, prompt, cfg, n);
    let mut journal = if cfg.resume && checkpoint.exists() {
        let (lines, valid) = Journal::read(&checkpoint)?;
        let mut it = lines.into_iter();
        match it.next() {
            Some(JournalLine::Header { fingerprint, .. }) if fingerprint == fp => {
                let rounds: Vec<RoundRecord> = it
                    .map(|l| match l {
                        JournalLine::Round(r) => Ok(*r),
                        JournalLine::Header { .. } => {
                            Err(GenerateError::Checkpoint { path: checkpoint.clone(), detail: "a second header".into() })
                        }
                    })
                    .collect::<Result<_, _>>()?;
                let resumed_round = rounds.last().map(|r| r.round);
                core.restore(rounds);
                if let Some(r) = resumed_round {
                    core.log.resumed_from_round = Some(r);
                    tracing::info!(round = r, accepted = core.accepted.len(), "resuming from {}", checkpoint.display());
                }
                Journal::reopen(&checkpoint, valid)?
            }
            Some(JournalLine::Header { .. }) => {
                return Err(GenerateError::Checkpoint {
                    path: checkpoint,
                    detail:
                        "written by a different prompt, teacher or generator configuration; delete it or set resume = false to start over"
                            .into(),
                });
            }
            _ => Journal::create(&checkpoint, &header)?,
        }
    } else {
        Journal::create(&checkpoint, &header)?
    };
    core.log.target = n;
    core.log.runs += 1;
    core.log.complete = false;
    core.log.stop_reason = None;
    if let Some(pb) = progress {
        pb.set_length(n as u64);
    }

    let stop = core.run(StopAt::Unique(n), Some(&mut journal), progress).await?;
    let mut examples = core.accepted.clone();
    examples.truncate(n);
    let mut log = core.log.clone();
    log.elapsed_secs = core.elapsed();
    log.teacher_stats = teacher.stats();
    log.complete = stop.is_none();
    log.stop_reason = stop.as_ref().map(|(r, _)| r.clone());

    write_examples_jsonl(&out_dir.join(EXAMPLES_FILE), &examples).map_err(io_err(&out_dir.join(EXAMPLES_FILE)))?;
    let log_json = serde_json::to_vec_pretty(&log).expect("serialisable");
    write_atomic(&out_dir.join(LOG_FILE), &log_json).map_err(io_err(&out_dir.join(LOG_FILE)))?;
    if let Some(pb) = progress {
        pb.set_position(examples.len() as u64);
        pb.finish();
    }
    match stop {
        None => Ok((examples, log)),
        Some((reason, source)) => Err(GenerateError::Stopped(Box::new(Stopped { reason, source, target: n, checkpoint, examples, log }))),
    }
}

// ---------------------------------------------------------------------------------------------
// The diversity experiment

/// Duplicates among `n` raw generated examples of one arm of the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiversityArm {
    pub high_diversity: bool,
    pub examples: usize,
    pub unique_inputs: usize,
    /// `examples − unique_inputs`.
    pub duplicate_inputs: usize,
    pub requests: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiversityReport {
    pub n: usize,
    pub with_high_diversity: DiversityArm,
    pub without_high_diversity: DiversityArm,
    /// The paper's numbers on gpt-3.5-turbo: (duplicates without, duplicates with, out of).
    pub paper: (usize, usize, usize),
}

/// The paper's ablation of high-diversity few-shot prompting: generate `n` raw examples with
/// and without previously generated examples in the prompt and count duplicate inputs (the
/// paper reports 120/200 without and 25/200 with, on gpt-3.5-turbo). Both arms use `cfg`
/// otherwise (seed, temperatures, batch sizes); nothing is written to disk.
pub async fn diversity_experiment(
    teacher: &dyn Teacher,
    prompt: &ParsedPrompt,
    n: usize,
    cfg: &GeneratorConfig,
) -> Result<DiversityReport, GenerateError> {
    let mut cfg = cfg.clone();
    cfg.num_examples = n;
    cfg.validate()?;
    let arm = |high: bool| {
        let mut c = cfg.clone();
        c.high_diversity = high;
        c
    };
    let (with_cfg, without_cfg) = (arm(true), arm(false));
    let mut arms = Vec::new();
    for c in [&with_cfg, &without_cfg] {
        let mut core = Core::new(teacher, prompt, c, n);
        if let Some((reason, source)) = core.run(StopAt::Raw(n), None, None).await? {
            let examples = core.candidates.clone();
            return Err(GenerateError::Stopped(Box::new(Stopped {
                reason,
                source,
                target: n,
                checkpoint: PathBuf::new(),
                examples,
                log: core.log,
            })));
        }
        let first: Vec<&Example> = core.candidates.iter().take(n).collect();
        let unique = first.iter().map(|e| e.input.as_str()).collect::<HashSet<_>>().len();
        arms.push(DiversityArm {
            high_diversity: c.high_diversity,
            examples: first.len(),
            unique_inputs: unique,
            duplicate_inputs: first.len() - unique,
            requests: core.log.requests,
        });
    }
    let without = arms.pop().expect("two arms");
    let with = arms.pop().expect("two arms");
    Ok(DiversityReport { n, with_high_diversity: with, without_high_diversity: without, paper: (120, 25, 200) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_is_robust() {
        let e = extract_examples("Sure! Here it is:\n```json\n{\"input\": \"a\", \"output\": \"b\"}\n```\nHope that helps.");
        assert_eq!(e.examples, vec![Example::new("a", "b")]);
        let e = extract_examples("[{\"input\": \"a\", \"output\": \"b\"}, {\"input\": \"c\", \"output\": \"d\"}, {\"input\": \"e\", \"out");
        assert_eq!(e.examples, vec![Example::new("a", "b"), Example::new("c", "d")]);
        let e = extract_examples("{\"input\": \"line1\nline2\", \"output\": 3,}");
        assert_eq!(e.examples, vec![Example::new("line1\nline2", "3")]);
        let e = extract_examples("{\"example\": {\"Input\": \"x\", \"Output\": \"y\"}}");
        assert_eq!(e.examples, vec![Example::new("x", "y")]);
        let e = extract_examples("input=\"q\"\noutput=\"r\"");
        assert_eq!(e.examples, vec![Example::new("q", "r")]);
        assert_eq!(extract_examples("{\"question\": \"x\"}").rejected, Some("missing_keys"));
        assert_eq!(extract_examples("{\"input\": \"\", \"output\": \"y\"}").rejected, Some("empty_field"));
        assert_eq!(extract_examples("{\"input\": \"x\", \"outp").rejected, Some("truncated_json"));
        assert_eq!(extract_examples("no idea").rejected, Some("no_json"));
        let e = extract_examples("{\"input\": \"brace } in string\", \"output\": \"ok\"}");
        assert_eq!(e.examples, vec![Example::new("brace } in string", "ok")]);
    }

    #[test]
    fn voting() {
        let c = vec![
            Example::new("a", "long answer"),
            Example::new("b", "1"),
            Example::new("a", "short"),
            Example::new("a", "long answer"),
            Example::new("c", "xx"),
            Example::new("c", "yy"),
            Example::new("d", "longer"),
            Example::new("d", "short"),
        ];
        let (v, conflicts) = self_consistency(&c);
        assert_eq!(v, vec![Example::new("a", "long answer"), Example::new("b", "1"), Example::new("c", "xx"), Example::new("d", "short")]);
        assert_eq!(conflicts, 3);
    }

    #[test]
    fn annealing() {
        let cfg = GeneratorConfig::default();
        assert!((cfg.temperature(0, 100) - 0.5).abs() < 1e-12);
        assert!((cfg.temperature(50, 100) - 1.1).abs() < 1e-12);
        assert!((cfg.temperature(100, 100) - 1.7).abs() < 1e-12);
        let wild = GeneratorConfig { initial_temperature: 1.5, max_temperature: 2.0, ..Default::default() };
        assert!(wild.temperature(300, 100) <= 2.0);
        let squad = GeneratorConfig::paper_squad();
        assert!((squad.temperature(100, 100) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn templates_follow_k() {
        let mut rng = SplitMix64::new(1);
        let cfg = GeneratorConfig::default();
        let p = build_prompt(&mut rng, "Do X.", "input=\"1\"\noutput=\"2\"", &[], &cfg);
        assert_eq!((p.k, p.template), (0, Template::Simple));
        assert!(p.text.contains("[low-quality examples]:\nN/A\n\n"));
        assert!(p.text.contains("- Example 2") && !p.text.contains("- Example 3"));
        assert!(p.text.starts_with("\n\nAs a DatasetGenerator"));
        assert!(p.text.ends_with("\n[new example (in JSON)]:"));
        let gen: Vec<Example> = (0..30).map(|i| Example::new(format!("in{i}"), format!("out{i}"))).collect();
        for _ in 0..50 {
            let p = build_prompt(&mut rng, "Do X.", "hq", &gen, &cfg);
            assert!((1..=10).contains(&p.k));
            assert_eq!(p.template, Template::for_k(p.k));
            assert_eq!(p.text.matches("input=\"in").count(), p.k);
        }
    }
}
