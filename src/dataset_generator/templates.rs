//! The generator's prompt templates: the reference's, as of the paper (typos included on purpose),
//! and the high-diversity few-shot prompt built from them.

use serde::{Deserialize, Serialize};

use super::config::GeneratorConfig;
use crate::data::examples::Example;
use crate::teacher::estimate_tokens;
use crate::util::rng::SplitMix64;

const META_PROMPT: &str = "\nAs a DatasetGenerator, your task is to generate a new example (`input` and `output`) based on the [new instruction] and [few-shot examples]. Please provide a JSON dictionary response that includes the new `input` and its corresponding `output`. Use the `input` and `output` keys in the dictionary. The 'input' field should be marked as 'N/A' if the instruction doesn't require additional input.\n\nTry you best to ensure that the input and output you generate are distinct from the provided examples while maintaining a diverse, detailed, precise, comprehensive, and high-quality response.\n\nAvoid generate examples that are the same to the provided examples.\n";

const RULE_92: &str =
    "--------------------------------------------------------------------------------------------";
const RULE_93: &str =
    "---------------------------------------------------------------------------------------------";

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
pub fn render_prompt(
    template: Template,
    meta: &[&str],
    instruction: &str,
    high_quality: &str,
    low_quality: &str,
) -> String {
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
    s.push_str(
        "\nHere is the requirement for the generation of a new example:\n\n[new instruction]:\n",
    );
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
            let k = rng.range_inclusive(
                1,
                generated.len().min(cfg.max_generated_examples_in_prompt.max(1)),
            );
            let mut shown: Vec<String> = rng
                .sample_indices(generated.len(), k)
                .into_iter()
                .map(|i| {
                    format!(
                        "input=\"{}\"\noutput=\"{}\"\n",
                        generated[i].input, generated[i].output
                    )
                })
                .collect();
            rng.shuffle(&mut shown);
            (k, shown.join("\n"))
        } else {
            (0, "N/A\n".to_string())
        };
        let template = Template::for_k(k);
        let meta: Vec<&str> = rng
            .sample_indices(META_EXAMPLES.len(), 4)
            .into_iter()
            .map(|i| META_EXAMPLES[i])
            .collect();
        let text = render_prompt(template, &meta, instruction, high_quality, &low);
        if estimate_tokens(&text) < cfg.context_cutoff_tokens || tries > 20 {
            if tries > 20 {
                tracing::warn!(
                    "the prompt stays above {} estimated tokens; consider a shorter prompt",
                    cfg.context_cutoff_tokens
                );
            }
            return BuiltPrompt { text, k, template };
        }
    }
}
