//! Questionnaire packs as data (`knowledge/questionnaires/*.toml`), parsed and validated
//! once at startup. Nothing here knows a regime: a pack brings its own product scale,
//! client categories, questions, points and override rules.
//!
//! Schema (TOML): `id`, `version`, `regime`, `title`, `intro`, `product_levels` (lowest
//! first), `[[levels]]` (`id`, `min_score`, `max_score` inclusive, `max_product`, `name`,
//! `meaning`), `[[questions]]` (`id`, `topic`, `text`, `[[questions.options]]` with `id`,
//! `label`, `points`, `keywords`, and optionally `cap` + `cap_reason`, `horizon_months`,
//! `liquidity_need`, `investable_assets`). Every text is `{ zh-CN = "…", en = "…" }`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::im::Language;

/// A text in both languages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    #[serde(rename = "zh-CN", default)]
    pub zh: String,
    #[serde(default)]
    pub en: String,
}

impl Text {
    pub fn get(&self, language: Language) -> &str {
        match language {
            Language::ZhCn => &self.zh,
            Language::En => &self.en,
        }
    }
}

/// Keyword lists per language for mapping free text onto an option.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keywords {
    #[serde(rename = "zh-CN", default)]
    pub zh: Vec<String>,
    #[serde(default)]
    pub en: Vec<String>,
}

/// How soon the client may need the money back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiquidityNeed {
    None,
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerOption {
    pub id: String,
    pub label: Text,
    pub points: u32,
    #[serde(default)]
    pub keywords: Keywords,
    /// Choosing this caps the category at this level id.
    #[serde(default)]
    pub cap: Option<String>,
    #[serde(default)]
    pub cap_reason: Option<Text>,
    /// Longest holding period this answer allows (topic `horizon`).
    #[serde(default)]
    pub horizon_months: Option<u32>,
    #[serde(default)]
    pub liquidity_need: Option<LiquidityNeed>,
    /// Lower bound of investable assets (topic `assets`).
    #[serde(default)]
    pub investable_assets: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub id: String,
    pub topic: String,
    pub text: Text,
    pub options: Vec<AnswerOption>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    pub id: String,
    pub min_score: u32,
    pub max_score: u32,
    pub max_product: String,
    pub name: Text,
    pub meaning: Text,
}

/// One questionnaire: its scale, categories and questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub id: String,
    pub version: String,
    pub regime: String,
    pub title: Text,
    pub intro: Text,
    pub product_levels: Vec<String>,
    pub levels: Vec<Level>,
    pub questions: Vec<Question>,
}

/// Topics with a meaning the engine uses beyond points.
pub const KNOWN_TOPICS: &[&str] = &[
    "age",
    "income",
    "assets",
    "asset_share",
    "debt",
    "knowledge",
    "experience_years",
    "experience_products",
    "horizon",
    "objective",
    "max_loss",
    "liquidity",
    "funds_source",
];

/// A questionnaire file that cannot be used, named down to the question.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("questionnaire {file}{}: {problem}", question.as_ref().map(|q| format!(", question {q}")).unwrap_or_default())]
pub struct PackError {
    pub file: String,
    pub question: Option<String>,
    pub problem: String,
}

impl Pack {
    /// Parses and validates one pack; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Pack, PackError> {
        let fail = |question: Option<&str>, problem: String| PackError {
            file: file.to_string(),
            question: question.map(str::to_string),
            problem,
        };
        let pack: Pack = toml::from_str(text).map_err(|e| fail(None, one_line(&e.to_string())))?;
        pack.validate().map_err(|(q, p)| fail(q.as_deref(), p))?;
        Ok(pack)
    }

    fn validate(&self) -> Result<(), (Option<String>, String)> {
        let top = |p: String| Err((None, p));
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return top(format!(
                "id {:?} must be lowercase letters, digits and '-'",
                self.id
            ));
        }
        for (what, text) in [("title", &self.title), ("intro", &self.intro)] {
            check_text(what, text).map_err(|p| (None, p))?;
        }
        if self.product_levels.is_empty() {
            return top("product_levels is empty".into());
        }
        if self.questions.is_empty() {
            return top("there are no questions".into());
        }
        let mut question_ids = HashSet::new();
        for q in &self.questions {
            let fail = |p: String| Err((Some(q.id.clone()), p));
            if !question_ids.insert(q.id.as_str()) {
                return fail("duplicate question id".into());
            }
            if !KNOWN_TOPICS.contains(&q.topic.as_str()) {
                return fail(format!("unknown topic {:?}", q.topic));
            }
            check_text("text", &q.text).map_err(|p| (Some(q.id.clone()), p))?;
            if q.options.len() < 2 || q.options.len() > 6 {
                return fail(format!(
                    "has {} options; 2 to 6 are needed",
                    q.options.len()
                ));
            }
            let mut option_ids = HashSet::new();
            for o in &q.options {
                if !option_ids.insert(o.id.as_str()) {
                    return fail(format!("duplicate option id {:?}", o.id));
                }
                check_text(&format!("option {} label", o.id), &o.label)
                    .map_err(|p| (Some(q.id.clone()), p))?;
                if let Some(cap) = &o.cap {
                    if !self.levels.iter().any(|l| &l.id == cap) {
                        return fail(format!("option {} caps at unknown level {cap:?}", o.id));
                    }
                    match &o.cap_reason {
                        Some(reason) => check_text(&format!("option {} cap_reason", o.id), reason)
                            .map_err(|p| (Some(q.id.clone()), p))?,
                        None => {
                            return fail(format!("option {} has a cap but no cap_reason", o.id));
                        }
                    }
                }
            }
        }
        // Levels: ascending, contiguous, exactly covering the possible scores.
        let (low, high) = self.score_range();
        if self.levels.is_empty() {
            return top("there are no levels".into());
        }
        let mut expected = low;
        let mut last_product = 0;
        for level in &self.levels {
            let fail = |p: String| Err((None, format!("level {}: {p}", level.id)));
            check_text("name", &level.name)
                .map_err(|p| (None, format!("level {}: {p}", level.id)))?;
            check_text("meaning", &level.meaning)
                .map_err(|p| (None, format!("level {}: {p}", level.id)))?;
            if level.min_score > level.max_score {
                return fail(format!(
                    "min_score {} is above max_score {}",
                    level.min_score, level.max_score
                ));
            }
            if level.min_score > expected {
                return fail(format!(
                    "scores {}..={} belong to no level (a gap)",
                    expected,
                    level.min_score - 1
                ));
            }
            if level.min_score < expected {
                return fail(format!(
                    "min_score {} overlaps the level below (expected {expected})",
                    level.min_score
                ));
            }
            expected = level.max_score + 1;
            let Some(product) = self
                .product_levels
                .iter()
                .position(|p| p == &level.max_product)
            else {
                return fail(format!(
                    "max_product {:?} is not in product_levels",
                    level.max_product
                ));
            };
            if product < last_product {
                return fail("max_product is lower than the level below".into());
            }
            last_product = product;
        }
        if expected != high + 1 {
            return top(format!(
                "levels end at {} but the highest possible score is {high}",
                expected - 1
            ));
        }
        let mut level_ids = HashSet::new();
        for level in &self.levels {
            if !level_ids.insert(level.id.as_str()) {
                return top(format!("duplicate level id {:?}", level.id));
            }
        }
        Ok(())
    }

    /// Lowest and highest possible total score.
    pub fn score_range(&self) -> (u32, u32) {
        self.questions.iter().fold((0, 0), |(lo, hi), q| {
            let min = q.options.iter().map(|o| o.points).min().unwrap_or(0);
            let max = q.options.iter().map(|o| o.points).max().unwrap_or(0);
            (lo + min, hi + max)
        })
    }

    pub fn level(&self, id: &str) -> Option<&Level> {
        self.levels.iter().find(|l| l.id == id)
    }

    /// Position of a level id in the pack's order (0 = lowest).
    pub fn level_rank(&self, id: &str) -> Option<usize> {
        self.levels.iter().position(|l| l.id == id)
    }

    /// Position of a product level (0 = lowest risk).
    pub fn product_rank(&self, id: &str) -> Option<usize> {
        self.product_levels.iter().position(|p| p == id)
    }

    pub fn question(&self, id: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.id == id)
    }
}

fn check_text(what: &str, text: &Text) -> Result<(), String> {
    if text.zh.trim().is_empty() {
        return Err(format!("{what} has no zh-CN translation"));
    }
    if text.en.trim().is_empty() {
        return Err(format!("{what} has no en translation"));
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The packs shipped with wealthdesk, used when the configured directory is the default
/// and does not exist (e.g. the binary runs outside its source tree).
const BUILT_IN: &[(&str, &str)] = &[
    (
        "cn-fund-risk.toml",
        include_str!("../../knowledge/questionnaires/cn-fund-risk.toml"),
    ),
    (
        "eu-mifid-sri.toml",
        include_str!("../../knowledge/questionnaires/eu-mifid-sri.toml"),
    ),
];

/// Loads every `*.toml` pack in `dir` (or the built-in packs when `dir` is absent and
/// `fallback_to_built_in`), refusing duplicates.
pub fn load_packs(dir: &Path, fallback_to_built_in: bool) -> Result<Vec<Pack>, PackError> {
    let mut files: Vec<(String, String)> = Vec::new();
    if !dir.exists() && fallback_to_built_in {
        files.extend(BUILT_IN.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| PackError {
            file: dir.display().to_string(),
            question: None,
            problem: format!("cannot read the directory: {e}"),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| PackError {
                file: path.display().to_string(),
                question: None,
                problem: format!("cannot read: {e}"),
            })?;
            files.push((path.display().to_string(), text));
        }
    }
    let mut packs: Vec<Pack> = Vec::new();
    for (file, text) in files {
        let pack = Pack::parse(&file, &text)?;
        if packs.iter().any(|p| p.id == pack.id) {
            return Err(PackError {
                file,
                question: None,
                problem: format!("pack id {:?} is defined twice", pack.id),
            });
        }
        packs.push(pack);
    }
    Ok(packs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "tiny"
version = "1"
regime = "test"
title = { zh-CN = "测", en = "Test" }
intro = { zh-CN = "介绍", en = "Intro" }
product_levels = ["R1", "R2"]

[[levels]]
id = "C1"
min_score = 0
max_score = 1
max_product = "R1"
name = { zh-CN = "保守", en = "Low" }
meaning = { zh-CN = "低", en = "Low" }

[[levels]]
id = "C2"
min_score = 2
max_score = 4
max_product = "R2"
name = { zh-CN = "积极", en = "High" }
meaning = { zh-CN = "高", en = "High" }

[[questions]]
id = "q1"
topic = "age"
text = { zh-CN = "年龄", en = "Age" }
options = [
  { id = "a", label = { zh-CN = "老", en = "Old" }, points = 0 },
  { id = "b", label = { zh-CN = "少", en = "Young" }, points = 2, cap = "C1", cap_reason = { zh-CN = "因", en = "Because" } },
]

[[questions]]
id = "q2"
topic = "max_loss"
text = { zh-CN = "损失", en = "Loss" }
options = [
  { id = "a", label = { zh-CN = "无", en = "None" }, points = 0 },
  { id = "b", label = { zh-CN = "多", en = "Much" }, points = 2 },
]
"#;

    fn broken(from: &str, to: &str) -> PackError {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "the replacement applies");
        Pack::parse("tiny.toml", &text).unwrap_err()
    }

    #[test]
    fn a_valid_pack_parses_and_knows_its_range() {
        let pack = Pack::parse("tiny.toml", GOOD).unwrap();
        assert_eq!(pack.score_range(), (0, 4));
    }

    #[test]
    fn malformed_packs_are_named_down_to_the_question() {
        let e = broken(
            r#"{ id = "b", label = { zh-CN = "多", en = "Much" }, points = 2 },"#,
            "",
        );
        assert_eq!(e.question.as_deref(), Some("q2"));
        assert!(e.problem.contains("1 options"), "{e}");

        let e = broken(r#"id = "q2""#, r#"id = "q1""#);
        assert_eq!(
            (e.question.as_deref(), e.problem.as_str()),
            (Some("q1"), "duplicate question id")
        );

        let e = broken("min_score = 2", "min_score = 3");
        assert!(e.problem.contains("gap"), "{e}");
        let e = broken("min_score = 2", "min_score = 1");
        assert!(e.problem.contains("overlaps"), "{e}");
        let e = broken("max_score = 4", "max_score = 5");
        assert!(e.problem.contains("highest possible score is 4"), "{e}");

        let e = broken(
            r#"text = { zh-CN = "损失", en = "Loss" }"#,
            r#"text = { en = "Loss" }"#,
        );
        assert_eq!(e.question.as_deref(), Some("q2"));
        assert!(e.problem.contains("zh-CN"), "{e}");

        let e = broken(r#"cap = "C1""#, r#"cap = "C9""#);
        assert!(e.problem.contains("unknown level"), "{e}");
        let e = broken(r#"topic = "age""#, r#"topic = "star_sign""#);
        assert!(e.problem.contains("unknown topic"), "{e}");
        let e = broken("points = 0 },", "points = -1 },");
        assert_eq!(e.file, "tiny.toml");
        assert!(e.to_string().starts_with("questionnaire tiny.toml"), "{e}");
    }

    #[test]
    fn the_shipped_packs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/questionnaires");
        let packs = load_packs(&dir, false).unwrap();
        let ids: Vec<&str> = packs.iter().map(|p| p.id.as_str()).collect();
        assert!(
            ids.contains(&"cn-fund-risk") && ids.contains(&"eu-mifid-sri"),
            "{ids:?}"
        );
        for pack in &packs {
            assert!((11..=15).contains(&pack.questions.len()), "{}", pack.id);
        }
    }
}
