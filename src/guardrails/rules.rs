//! Guardrail rules as data: `knowledge/guardrails/*.toml`, each file a list of
//! `[[rule]]` tables (schema in `docs/guardrails.md`). Loaded and checked at startup: a
//! bad regex, an unknown action, direction or check, a duplicate id, or a block rule
//! with no reply stops the service, naming the file and the rule.

use std::collections::HashSet;
use std::path::Path;

use regex::{Regex, RegexSet};
use serde::Deserialize;

use super::pii::PiiKind;
use crate::questionnaire::definition::Text;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Input: refuse politely (the rule's reply). Output: replace the reply with a safe
    /// fallback.
    Block,
    /// Input: replace identifiers by placeholders. Output: append the rule's disclosure.
    Rewrite,
    /// Record for compliance review; change nothing.
    Flag,
    /// Hand the conversation to a human advisor.
    Escalate,
}

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Client messages, before anything else sees them.
    Input,
    /// Bot replies, before the client sees them.
    Output,
    /// Advisors' messages (always in flag mode).
    Advisor,
}

/// A check done in code rather than by patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Pii(PiiKind),
    /// Any kind of identifier.
    AnyPii,
    /// A product above the client's level encouraged, or any product without a profile.
    Suitability,
    /// Figures that appear in no source and not in the client's words.
    UngroundedFigures,
    /// Fragments of the system prompt.
    SystemPrompt,
}

/// A sentence-level exemption done in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exemption {
    /// The sentence names a product whose sheet says it is principal-protected.
    PrincipalProtectedProduct,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rule: Vec<RuleDef>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Patterns {
    #[serde(rename = "zh-CN", default)]
    zh: Vec<String>,
    #[serde(default)]
    en: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    id: String,
    description: String,
    packs: Vec<String>,
    directions: Vec<String>,
    action: String,
    #[serde(default)]
    patterns: Patterns,
    /// A sentence matching one of these is exempt (negations, disclaimers).
    #[serde(default)]
    exempt: Patterns,
    /// The rule does not fire when the whole text matches one of these (a disclosure
    /// already present).
    #[serde(default)]
    unless_present: Patterns,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    exempt_check: Option<String>,
    /// Replaces an identifier (input rewrite).
    #[serde(default)]
    placeholder: Option<String>,
    /// Said to the client when an input rule blocks.
    #[serde(default)]
    reply: Option<Text>,
    /// Appended when an output rule rewrites.
    #[serde(default)]
    disclosure: Option<Text>,
    /// A blocked output also hands the conversation to an advisor.
    #[serde(default)]
    handoff: bool,
}

/// A loaded rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub packs: Vec<String>,
    pub directions: Vec<Direction>,
    pub action: Action,
    /// Both languages' patterns, on normalised text.
    pub patterns: Vec<Regex>,
    pub exempt: Option<RegexSet>,
    pub unless_present: Option<RegexSet>,
    pub check: Option<Check>,
    pub exempt_check: Option<Exemption>,
    pub placeholder: Option<String>,
    pub reply: Option<Text>,
    pub disclosure: Option<Text>,
    pub handoff: bool,
    pub file: String,
}

/// A problem with one rule.
#[derive(Debug, thiserror::Error)]
#[error("guardrail rules {file}: {problem}")]
pub struct RuleError {
    pub file: String,
    pub problem: String,
}

fn compile(list: &[String]) -> Result<Vec<Regex>, String> {
    list.iter()
        .map(|p| Regex::new(p).map_err(|e| format!("bad pattern {p:?}: {e}")))
        .collect()
}

fn set(p: &Patterns) -> Result<Option<RegexSet>, String> {
    let all: Vec<&String> = p.zh.iter().chain(&p.en).collect();
    if all.is_empty() {
        return Ok(None);
    }
    RegexSet::new(&all)
        .map(Some)
        .map_err(|e| format!("bad pattern: {e}"))
}

fn parse_rule(def: RuleDef, file: &str) -> Result<Rule, String> {
    let at = |problem: String| format!("rule {}: {problem}", def.id);
    if def.id.trim().is_empty() {
        return Err("a rule has an empty id".into());
    }
    let action = match def.action.as_str() {
        "block" => Action::Block,
        "rewrite" => Action::Rewrite,
        "flag" => Action::Flag,
        "escalate" => Action::Escalate,
        other => {
            return Err(at(format!(
                "unknown action {other:?} (block, rewrite, flag, escalate)"
            )));
        }
    };
    let mut directions = Vec::new();
    for d in &def.directions {
        directions.push(match d.as_str() {
            "input" => Direction::Input,
            "output" => Direction::Output,
            "advisor" => Direction::Advisor,
            other => {
                return Err(at(format!(
                    "unknown direction {other:?} (input, output, advisor)"
                )));
            }
        });
    }
    if directions.is_empty() {
        return Err(at("names no direction".into()));
    }
    if def.packs.is_empty() {
        return Err(at("belongs to no pack".into()));
    }
    let check = match def.check.as_deref() {
        None => None,
        Some("suitability") => Some(Check::Suitability),
        Some("ungrounded_figures") => Some(Check::UngroundedFigures),
        Some("system_prompt") => Some(Check::SystemPrompt),
        Some("pii:any") => Some(Check::AnyPii),
        Some(other) => match other.strip_prefix("pii:").and_then(PiiKind::parse) {
            Some(kind) => Some(Check::Pii(kind)),
            None => {
                return Err(at(format!(
                    "unknown check {other:?} (pii:cn_id, pii:bank_card, pii:phone, pii:email, pii:passport, pii:any, suitability, ungrounded_figures, system_prompt)"
                )));
            }
        },
    };
    let exempt_check = match def.exempt_check.as_deref() {
        None => None,
        Some("principal_protected_product") => Some(Exemption::PrincipalProtectedProduct),
        Some(other) => return Err(at(format!("unknown exempt_check {other:?}"))),
    };
    let patterns: Vec<Regex> = compile(&def.patterns.zh)
        .and_then(|mut zh| {
            zh.extend(compile(&def.patterns.en)?);
            Ok(zh)
        })
        .map_err(at)?;
    if patterns.is_empty() && check.is_none() {
        return Err(at("has neither patterns nor a check".into()));
    }
    if action == Action::Block
        && directions.contains(&Direction::Input)
        && def
            .reply
            .as_ref()
            .is_none_or(|r| r.zh.is_empty() || r.en.is_empty())
    {
        return Err(at("blocks input but has no reply in zh-CN and en".into()));
    }
    if action == Action::Rewrite
        && directions.contains(&Direction::Output)
        && def
            .disclosure
            .as_ref()
            .is_none_or(|r| r.zh.is_empty() || r.en.is_empty())
    {
        return Err(at(
            "rewrites output but has no disclosure in zh-CN and en".into()
        ));
    }
    if matches!(check, Some(Check::Pii(_)))
        && action == Action::Rewrite
        && def.placeholder.is_none()
    {
        return Err(at("redacts identifiers but has no placeholder".into()));
    }
    Ok(Rule {
        exempt: set(&def.exempt).map_err(at)?,
        unless_present: set(&def.unless_present).map_err(at)?,
        id: def.id,
        description: def.description,
        packs: def.packs,
        directions,
        action,
        patterns,
        check,
        exempt_check,
        placeholder: def.placeholder,
        reply: def.reply,
        disclosure: def.disclosure,
        handoff: def.handoff,
        file: file.to_string(),
    })
}

/// Parses one rule file's text.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let fail = |problem: String| RuleError {
        file: file.to_string(),
        problem,
    };
    let parsed: RuleFile = toml::from_str(text)
        .map_err(|e| fail(e.message().split_whitespace().collect::<Vec<_>>().join(" ")))?;
    parsed
        .rule
        .into_iter()
        .map(|def| parse_rule(def, file).map_err(fail))
        .collect()
}

/// The shipped rule file, compiled into the binary (used when the default directory is
/// absent, e.g. a binary run outside the source tree).
pub fn built_in(packs: &[String]) -> Result<Vec<Rule>, RuleError> {
    let rules = parse_file(
        "(built in) rules.toml",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/knowledge/guardrails/rules.toml"
        )),
    )?;
    check_unique(&rules)?;
    Ok(rules
        .into_iter()
        .filter(|r| r.packs.iter().any(|p| packs.contains(p)))
        .collect())
}

/// Every rule of `packs` in the `*.toml` files of `dir`.
pub fn load(dir: &Path, packs: &[String]) -> Result<Vec<Rule>, RuleError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| RuleError {
            file: dir.display().to_string(),
            problem: format!("cannot be read: {e}"),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| RuleError {
            file: file.clone(),
            problem: format!("cannot be read: {e}"),
        })?;
        rules.extend(parse_file(&file, &text)?);
    }
    check_unique(&rules)?;
    Ok(rules
        .into_iter()
        .filter(|r| r.packs.iter().any(|p| packs.contains(p)))
        .collect())
}

pub fn check_unique(rules: &[Rule]) -> Result<(), RuleError> {
    let mut seen = HashSet::new();
    for r in rules {
        if !seen.insert(r.id.as_str()) {
            return Err(RuleError {
                file: r.file.clone(),
                problem: format!("rule {}: duplicate id", r.id),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Vec<Rule>, RuleError> {
        parse_file("test.toml", &format!("[[rule]]\n{body}"))
    }

    #[test]
    fn broken_rules_are_refused_by_name() {
        let base =
            "id = \"X-1\"\ndescription = \"d\"\npacks = [\"cn\"]\ndirections = [\"output\"]\n";
        let e = one(&format!("{base}action = \"shout\"\npatterns.en = [\"x\"]")).unwrap_err();
        assert!(
            e.to_string().contains("rule X-1: unknown action \"shout\""),
            "{e}"
        );
        let e = one(&format!(
            "{base}action = \"flag\"\npatterns.en = [\"(unclosed\"]"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rule X-1: bad pattern"), "{e}");
        let e = one(&format!("{base}action = \"flag\"\ncheck = \"telepathy\"")).unwrap_err();
        assert!(e.to_string().contains("unknown check \"telepathy\""), "{e}");
        let e = one(&format!("{base}action = \"flag\"")).unwrap_err();
        assert!(
            e.to_string().contains("neither patterns nor a check"),
            "{e}"
        );
        let twice = format!(
            "{base}action = \"flag\"\npatterns.en = [\"x\"]\n[[rule]]\n{base}action = \"flag\"\npatterns.en = [\"y\"]"
        );
        let rules = parse_file("test.toml", &format!("[[rule]]\n{twice}")).unwrap();
        let e = check_unique(&rules).unwrap_err();
        assert!(e.to_string().contains("rule X-1: duplicate id"), "{e}");
    }
}
