//! Mapping what a client typed onto one of a question's options: its number, its letter,
//! its label, or free text matched by keywords (zh-CN and English) and small typos. When
//! nothing or more than one option fits, the answer is not guessed.

use super::definition::Question;

/// The result of mapping a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// The index of the option.
    Option(usize),
    /// Several options fit equally well.
    Ambiguous(Vec<usize>),
    Unknown,
}

/// Lowercase, full-width folded to ASCII, spaces and punctuation removed.
pub fn normalise(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Words around an option reference that carry no meaning ("选A", "option b", "第2个").
const WRAPPERS: &[&str] = &[
    "我选择",
    "我选",
    "选择",
    "选项",
    "选",
    "答案",
    "答",
    "第",
    "个",
    "项",
    "option",
    "answer",
    "choice",
    "iwouldsay",
    "ichoose",
    "ipick",
    "my",
    "is",
    "the",
];

fn strip_wrappers(mut text: String) -> String {
    loop {
        let before = text.clone();
        for w in WRAPPERS {
            if let Some(rest) = text.strip_prefix(w) {
                text = rest.to_string();
            }
            if let Some(rest) = text.strip_suffix(w) {
                text = rest.to_string();
            }
        }
        if text == before {
            return text;
        }
    }
}

fn chinese_numeral(text: &str) -> Option<usize> {
    ["一", "二", "三", "四", "五", "六"]
        .iter()
        .position(|n| *n == text)
        .map(|i| i + 1)
}

pub fn map_answer(question: &Question, reply: &str) -> Mapped {
    let n = question.options.len();
    let text = normalise(reply);
    if text.is_empty() || text.chars().count() > 200 {
        return Mapped::Unknown;
    }
    let bare = strip_wrappers(text.clone());
    // A number: 1-based position.
    if let Ok(number) = bare.parse::<usize>() {
        return if (1..=n).contains(&number) {
            Mapped::Option(number - 1)
        } else if question_has_numeric_keyword(question, &bare) {
            keyword_match(question, &text)
        } else {
            Mapped::Unknown
        };
    }
    if let Some(number) = chinese_numeral(&bare).filter(|k| *k <= n) {
        return Mapped::Option(number - 1);
    }
    // A letter.
    if bare.chars().count() == 1
        && let Some(c) = bare.chars().next().filter(char::is_ascii_lowercase)
    {
        let index = (c as u8 - b'a') as usize;
        return if index < n {
            Mapped::Option(index)
        } else {
            Mapped::Unknown
        };
    }
    // A label, exactly.
    let exact: Vec<usize> = (0..n)
        .filter(|&i| {
            let o = &question.options[i];
            normalise(&o.label.zh) == text || normalise(&o.label.en) == text
        })
        .collect();
    if exact.len() == 1 {
        return Mapped::Option(exact[0]);
    }
    keyword_match(question, &text)
}

fn question_has_numeric_keyword(question: &Question, text: &str) -> bool {
    question.options.iter().any(|o| {
        o.keywords
            .zh
            .iter()
            .chain(&o.keywords.en)
            .any(|k| normalise(k) == text)
    })
}

/// Options whose keywords or label occur in the reply; the longest match wins, a tie is
/// ambiguous. Failing that, one typo-tolerant match against English labels and keywords.
fn keyword_match(question: &Question, text: &str) -> Mapped {
    let mut best: Vec<(usize, usize)> = Vec::new(); // (option, matched length)
    for (i, option) in question.options.iter().enumerate() {
        let candidates = option
            .keywords
            .zh
            .iter()
            .chain(&option.keywords.en)
            .chain([&option.label.zh, &option.label.en]);
        let longest = candidates
            .map(|k| normalise(k))
            .filter(|k| k.chars().count() >= 2 && text.contains(k.as_str()))
            .map(|k| k.chars().count())
            .max();
        if let Some(length) = longest {
            best.push((i, length));
        }
    }
    if let Some(top) = best.iter().map(|(_, l)| *l).max() {
        let winners: Vec<usize> = best
            .iter()
            .filter(|(_, l)| *l == top)
            .map(|(i, _)| *i)
            .collect();
        return if winners.len() == 1 {
            Mapped::Option(winners[0])
        } else {
            Mapped::Ambiguous(winners)
        };
    }
    if text.chars().count() >= 5 {
        let close: Vec<usize> = question
            .options
            .iter()
            .enumerate()
            .filter(|(_, o)| {
                o.keywords
                    .en
                    .iter()
                    .chain([&o.label.en])
                    .any(|k| edit_distance(&normalise(k), text) <= 2)
            })
            .map(|(i, _)| i)
            .collect();
        if close.len() == 1 {
            return Mapped::Option(close[0]);
        }
    }
    Mapped::Unknown
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questionnaire::definition::{AnswerOption, Keywords, Text};

    fn option(id: &str, zh: &str, en: &str, keywords: (&[&str], &[&str])) -> AnswerOption {
        AnswerOption {
            id: id.into(),
            label: Text {
                zh: zh.into(),
                en: en.into(),
            },
            points: 1,
            keywords: Keywords {
                zh: keywords.0.iter().map(|s| s.to_string()).collect(),
                en: keywords.1.iter().map(|s| s.to_string()).collect(),
            },
            cap: None,
            cap_reason: None,
            horizon_months: None,
            liquidity_need: None,
            investable_assets: None,
        }
    }

    fn loss_question() -> Question {
        Question {
            id: "max_loss".into(),
            topic: "max_loss".into(),
            text: Text {
                zh: "您能接受的最大亏损？".into(),
                en: "The largest loss you can accept?".into(),
            },
            options: vec![
                option(
                    "a",
                    "不能接受任何本金损失",
                    "No loss of principal at all",
                    (&["不能亏", "保本"], &["no loss", "cannot lose"]),
                ),
                option(
                    "b",
                    "10%以内",
                    "Up to 10%",
                    (&["百分之十", "一成"], &["ten percent", "10 percent"]),
                ),
                option(
                    "c",
                    "10%–30%",
                    "10% to 30%",
                    (&["三成", "百分之三十"], &["thirty percent"]),
                ),
                option(
                    "d",
                    "30%以上",
                    "More than 30%",
                    (&["很大", "无所谓"], &["large losses", "any loss"]),
                ),
            ],
        }
    }

    #[test]
    fn numbers_letters_and_labels_map_in_both_languages() {
        let q = loss_question();
        for (reply, expected) in [
            ("2", 1),
            ("２", 1),
            ("第3个", 2),
            ("选B", 1),
            ("b", 1),
            ("(d)", 3),
            ("Option C", 2),
            ("三", 2),
            ("不能接受任何本金损失", 0),
            ("up to 10%", 1),
            ("我一点都不能亏", 0),
            ("亏一成还能接受", 1),
            ("I cannot lose anything", 0),
            ("thirty percent is my limit", 2),
            ("larg losses", 3),
        ] {
            assert_eq!(map_answer(&q, reply), Mapped::Option(expected), "{reply}");
        }
    }

    #[test]
    fn unmappable_replies_are_not_guessed() {
        let q = loss_question();
        for reply in [
            "",
            "   ",
            "7",
            "z",
            "🙂🙂",
            "what's the weather",
            &"很长".repeat(300),
        ] {
            assert_eq!(map_answer(&q, reply), Mapped::Unknown, "{reply}");
        }
        assert_eq!(
            map_answer(&q, "保本还是三成"),
            Mapped::Ambiguous(vec![0, 2])
        );
    }
}
