//! Prompt templates as versioned files: `prompts/<kind>.<language>.md`, TOML front matter
//! between `+++` lines, then the template with `{{variable}}` placeholders. Loaded and
//! checked at startup — a missing file, an unknown or missing variable, or front matter
//! that disagrees with the file name stops the service, naming the file. Every rendered
//! prompt carries its id (`answer.en@v1`) and the SHA-256 of its file, which the turn
//! record keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::im::Language;

/// What a prompt is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PromptKind {
    System,
    Answer,
    Recommendation,
    HandoffSummary,
    AnswerMapping,
}

impl PromptKind {
    pub const ALL: [PromptKind; 5] = [
        PromptKind::System,
        PromptKind::Answer,
        PromptKind::Recommendation,
        PromptKind::HandoffSummary,
        PromptKind::AnswerMapping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PromptKind::System => "system",
            PromptKind::Answer => "answer",
            PromptKind::Recommendation => "recommendation",
            PromptKind::HandoffSummary => "handoff_summary",
            PromptKind::AnswerMapping => "answer_mapping",
        }
    }

    /// Variables every template of this kind must use, and those it may use.
    fn variables(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            PromptKind::System => (
                &["client_level", "allowed_products"],
                &["institution", "today"],
            ),
            PromptKind::Answer => (&["question", "context"], &["client_level"]),
            PromptKind::Recommendation => (
                &["question", "candidates", "allowed_products"],
                &["client_level"],
            ),
            PromptKind::HandoffSummary => (&["transcript", "reason"], &["client_level"]),
            PromptKind::AnswerMapping => (&["question", "options", "reply"], &[]),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Front {
    id: String,
    language: String,
    version: u32,
    description: String,
}

/// One loaded template.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub kind: PromptKind,
    pub language: Language,
    pub version: u32,
    /// `<kind>.<language>@v<version>`.
    pub id: String,
    /// SHA-256 of the file, hex.
    pub hash: String,
    pub description: String,
    body: String,
}

/// A template filled in: the text sent and the identity of its template.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rendered {
    pub id: String,
    pub hash: String,
    pub text: String,
}

impl Prompt {
    /// The template as written (for recognising it quoted back).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Fills every placeholder. The caller supplies all the kind's variables (checked
    /// in debug builds); values are inserted verbatim, never re-scanned.
    pub fn render(&self, values: &[(&str, &str)]) -> Rendered {
        let mut text = String::with_capacity(self.body.len() + 256);
        let mut rest = self.body.as_str();
        while let Some(start) = rest.find("{{") {
            text.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").expect("validated at load");
            let name = &after[..end];
            let value = values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            debug_assert!(value.is_some(), "prompt {} needs {name}", self.id);
            text.push_str(value.unwrap_or_default());
            rest = &after[end + 2..];
        }
        text.push_str(rest);
        Rendered {
            id: self.id.clone(),
            hash: self.hash.clone(),
            text,
        }
    }
}

/// A problem with one prompt file.
#[derive(Debug, thiserror::Error)]
#[error("prompt {file}: {problem}")]
pub struct PromptError {
    pub file: String,
    pub problem: String,
}

/// Every template, by kind and language.
#[derive(Debug, Clone)]
pub struct Prompts {
    by_key: BTreeMap<(PromptKind, &'static str), Prompt>,
}

impl Prompts {
    /// Loads `<kind>.<language>.md` for every kind and language from `dir`.
    pub fn load(dir: &Path) -> Result<Prompts, PromptError> {
        let mut by_key = BTreeMap::new();
        for kind in PromptKind::ALL {
            for language in [Language::ZhCn, Language::En] {
                let name = format!("{}.{}.md", kind.as_str(), language.as_str());
                let path = dir.join(&name);
                let file = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|e| PromptError {
                    file: file.clone(),
                    problem: format!(
                        "cannot be read ({e}); every kind needs a zh-CN and an en file"
                    ),
                })?;
                let prompt = parse(&file, kind, language, &text)?;
                by_key.insert((kind, language.as_str()), prompt);
            }
        }
        Ok(Prompts { by_key })
    }

    /// The templates shipped in `prompts/`, compiled into the binary.
    pub fn built_in() -> Result<Prompts, PromptError> {
        let mut by_key = BTreeMap::new();
        for (kind, language, text) in BUILT_IN {
            let prompt = parse(
                &format!("(built in) {}.{}.md", kind.as_str(), language.as_str()),
                *kind,
                *language,
                text,
            )?;
            by_key.insert((*kind, language.as_str()), prompt);
        }
        Ok(Prompts { by_key })
    }

    pub fn get(&self, kind: PromptKind, language: Language) -> &Prompt {
        &self.by_key[&(kind, language.as_str())]
    }
}

macro_rules! built_in {
    ($(($kind:expr, $lang:expr, $file:literal)),* $(,)?) => {
        &[$(($kind, $lang, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/", $file)))),*]
    };
}

const BUILT_IN: &[(PromptKind, Language, &str)] = built_in![
    (PromptKind::System, Language::ZhCn, "system.zh-CN.md"),
    (PromptKind::System, Language::En, "system.en.md"),
    (PromptKind::Answer, Language::ZhCn, "answer.zh-CN.md"),
    (PromptKind::Answer, Language::En, "answer.en.md"),
    (
        PromptKind::Recommendation,
        Language::ZhCn,
        "recommendation.zh-CN.md"
    ),
    (
        PromptKind::Recommendation,
        Language::En,
        "recommendation.en.md"
    ),
    (
        PromptKind::HandoffSummary,
        Language::ZhCn,
        "handoff_summary.zh-CN.md"
    ),
    (
        PromptKind::HandoffSummary,
        Language::En,
        "handoff_summary.en.md"
    ),
    (
        PromptKind::AnswerMapping,
        Language::ZhCn,
        "answer_mapping.zh-CN.md"
    ),
    (
        PromptKind::AnswerMapping,
        Language::En,
        "answer_mapping.en.md"
    ),
];

/// Parses and checks one template.
pub fn parse(
    file: &str,
    kind: PromptKind,
    language: Language,
    text: &str,
) -> Result<Prompt, PromptError> {
    let fail = |problem: String| PromptError {
        file: file.to_string(),
        problem,
    };
    let (front, body): (Front, String) =
        crate::knowledge::products::front_matter(file, text).map_err(|e| fail(e.problem))?;
    if front.id != kind.as_str() {
        return Err(fail(format!(
            "id {:?} does not match the file name (expected {:?})",
            front.id,
            kind.as_str()
        )));
    }
    if front.language != language.as_str() {
        return Err(fail(format!(
            "language {:?} does not match the file name (expected {:?})",
            front.language,
            language.as_str()
        )));
    }
    if body.trim().is_empty() {
        return Err(fail("the template is empty".into()));
    }
    let used = placeholders(&body).map_err(fail)?;
    let (required, optional) = kind.variables();
    if let Some(unknown) = used
        .iter()
        .find(|v| !required.contains(&v.as_str()) && !optional.contains(&v.as_str()))
    {
        let mut known: Vec<&str> = required.iter().chain(optional).copied().collect();
        known.sort_unstable();
        return Err(fail(format!(
            "unknown variable {{{{{unknown}}}}} (a {} prompt knows: {})",
            kind.as_str(),
            known.join(", ")
        )));
    }
    if let Some(missing) = required.iter().find(|v| !used.contains(**v)) {
        return Err(fail(format!(
            "does not use the required variable {{{{{missing}}}}}"
        )));
    }
    Ok(Prompt {
        kind,
        language,
        version: front.version,
        id: format!("{}.{}@v{}", kind.as_str(), language.as_str(), front.version),
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        description: front.description,
        body,
    })
}

/// The variable names a template uses; an unclosed or malformed placeholder is an error.
fn placeholders(body: &str) -> Result<BTreeSet<String>, String> {
    let mut used = BTreeSet::new();
    let mut rest = body;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a {{ placeholder is never closed".to_string())?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "{{{{{name}}}}} is not a variable name (lowercase letters, digits, _)"
            ));
        }
        used.insert(name.to_string());
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("a }} has no opening {{".into());
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(id: &str, body: &str) -> String {
        format!(
            "+++\nid = \"{id}\"\nlanguage = \"en\"\nversion = 2\ndescription = \"d\"\n+++\n{body}\n"
        )
    }

    #[test]
    fn the_shipped_prompts_load() {
        let prompts = Prompts::load(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("prompts")
                .as_path(),
        )
        .expect("shipped prompts are valid");
        let p = prompts.get(PromptKind::Answer, Language::ZhCn);
        assert!(p.id.starts_with("answer.zh-CN@v"));
        assert_eq!(p.hash.len(), 64);
        let r = p.render(&[
            ("question", "赎回要多久？"),
            ("context", "[1] 赎回"),
            ("client_level", "C3"),
        ]);
        assert!(r.text.contains("赎回要多久？") && !r.text.contains("{{"));
    }

    #[test]
    fn unknown_and_missing_variables_are_refused_by_name() {
        let e = parse(
            "answer.en.md",
            PromptKind::Answer,
            Language::En,
            &template("answer", "{{question}} {{context}} {{client_name}}"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown variable {{client_name}}"),
            "{e}"
        );
        let e = parse(
            "answer.en.md",
            PromptKind::Answer,
            Language::En,
            &template("answer", "{{question}} only"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("required variable {{context}}"),
            "{e}"
        );
        let e = parse(
            "answer.en.md",
            PromptKind::Answer,
            Language::En,
            &template("system", "{{question}} {{context}}"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("does not match the file name"),
            "{e}"
        );
        let e = parse(
            "answer.en.md",
            PromptKind::Answer,
            Language::En,
            &template("answer", "{{question}} {{context}} {{ broken"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("never closed"), "{e}");
    }

    #[test]
    fn values_are_inserted_verbatim() {
        let p = parse(
            "answer.en.md",
            PromptKind::Answer,
            Language::En,
            &template("answer", "Q: {{question}}\nC: {{context}}"),
        )
        .unwrap();
        let r = p.render(&[("question", "what is {{context}}?"), ("context", "x")]);
        assert_eq!(r.text, "Q: what is {{context}}?\nC: x");
        assert_eq!(r.id, "answer.en@v2");
    }
}
