//! Compliance guardrails. Input rails run on every client message before anything else
//! sees it: identifiers are replaced by placeholders (the model, the logs and the
//! retrieval query only ever see those), injection attempts and out-of-scope requests are
//! refused, and complaints, vulnerability and requests for a person are escalated. Output
//! rails run on every bot reply — sentence by sentence while it streams — and block
//! promises, predictions, unsuitable products, ungrounded figures and leaks, or add the
//! disclosures the rules require. Advisors' messages pass the output rules in flag mode.
//! Every decision (rule, action, redacted span, latency) goes on the turn record.

pub mod eval;
pub mod normalize;
pub mod pii;
pub mod rules;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use base64::Engine;
use regex::Regex;
use serde::Serialize;

use crate::im::Language;
use crate::knowledge::Catalog;
pub use normalize::Normalized;
pub use rules::{Action, Check, Direction, Exemption, Rule, RuleError};

/// One rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub rule: String,
    pub action: Action,
    /// What matched, with any identifier in it replaced by its placeholder.
    pub span: String,
}

/// What the input rails decided about a client message.
#[derive(Debug, Clone, Serialize)]
pub struct InputVerdict {
    /// The message with identifiers replaced: what everything downstream sees.
    pub redacted: String,
    pub decisions: Vec<Decision>,
    /// The rule that refuses the message, with the reply to give.
    pub blocked: Option<(String, String)>,
    /// The rule that calls for a person.
    pub escalated: Option<String>,
    pub micros: f64,
}

/// What the output rails decided about a reply (or a sentence of one).
#[derive(Debug, Clone, Serialize)]
pub struct OutputVerdict {
    /// The text to show: the reply with any disclosure added.
    pub text: String,
    pub decisions: Vec<Decision>,
    /// The rule that blocks the reply, and whether it asks for a handoff.
    pub blocked: Option<(String, bool)>,
    pub micros: f64,
}

/// What a reply may rely on.
#[derive(Debug, Clone, Default)]
pub struct OutputContext<'a> {
    /// The client's highest allowed product level (`R3`, `SRI4`); `None`: no valid profile.
    pub max_product: Option<&'a str>,
    /// The texts the reply was written from.
    pub sources: &'a [String],
    /// What the client said (their figures may be repeated).
    pub client_words: &'a str,
}

/// The loaded rules and what they check against.
#[derive(Debug, Clone)]
pub struct Guard {
    rules: Arc<Vec<Rule>>,
    catalog: Arc<Catalog>,
    /// Distinctive lines of the system prompts (a reply quoting one leaks it).
    prompt_lines: Arc<Vec<String>>,
    /// Each product's id and normalised names, to find the products a reply names.
    product_names: Arc<Vec<(String, String, String)>>,
}

fn base64_runs() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"[A-Za-z0-9+/]{16,}={0,2}").expect("valid"))
}

fn figures() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"(?x)
            (?:[¥$€£]|cny|usd|hkd|rmb)\s?[0-9][0-9,]*(?:\.[0-9]+)?
            | [0-9][0-9,]*(?:\.[0-9]+)?\s?(?:%|‰|元|万元|万|亿|美元|港元|人民币|个月|年|天|日|个工作日|
                cny|usd|hkd|yuan|dollars?|percent|per\ cent|months?|years?|days?|business\ days?)
            | (?:19|20)[0-9]{2}(?:[-/.][0-9]{1,2}(?:[-/.][0-9]{1,2})?)?",
        )
        .expect("valid")
    })
}

fn numbers() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"[0-9][0-9,]*(?:\.[0-9]+)?").expect("valid"))
}

/// A number as written, without thousands separators and trailing decimal zeros.
fn canonical(number: &str) -> String {
    let n = number.replace(',', "");
    if n.contains('.') {
        n.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        n
    }
}

fn negated() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"不适合|不能推荐|不能向您推荐|无法推荐|无法向您推荐|不可以推荐|不建议|高于您|超出您|超过您|超过了您|not suitable|unsuitable|cannot recommend|can't recommend|can not recommend|cannot be recommended|not able to recommend|not recommend|above your|outside your|exceeds your|beyond your|not for you|isn't suitable|is not within",
        )
        .expect("valid")
    })
}

fn recommending() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"推荐|建议|适合您|可以考虑|可以(先)?买|先买|买入|购买|不妨|值得|recommend|suggest|consider|suits you|suitable for you|good fit|you could (buy|start|try)|you can (buy|start)|start with|you should buy|worth buying|go for|how about|you might like|move (part of |some of )?(your )?(savings|money) into|put (part of |some of )?your (savings|money) into|buy it now|i'?d (buy|move|put)",
        )
        .expect("valid")
    })
}

fn product_ids() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"hb-[a-z]+-[0-9]+").expect("valid"))
}

impl Guard {
    pub fn new(rules: Vec<Rule>, catalog: Arc<Catalog>, system_prompts: &[String]) -> Guard {
        // The prompts' sentences, cut at their placeholders: pieces long enough to be
        // recognised when quoted back.
        let prompt_lines = system_prompts
            .iter()
            .flat_map(|p| crate::knowledge::document::sentences(p))
            .flat_map(|s| {
                s.split("{{")
                    .map(|part| {
                        part.split_once("}}")
                            .map_or(part, |(_, rest)| rest)
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .map(|l| {
                Normalized::new(
                    l.trim_matches(|c: char| c.is_whitespace() || "-,.，。:：".contains(c)),
                )
                .text
            })
            .filter(|l| l.chars().count() >= 16)
            .collect();
        let product_names = catalog
            .products()
            .iter()
            .map(|p| {
                (
                    p.sheet.id.clone(),
                    Normalized::new(&p.sheet.name.zh).text,
                    Normalized::new(&p.sheet.name.en).text,
                )
            })
            .collect();
        Guard {
            rules: Arc::new(rules),
            catalog,
            prompt_lines: Arc::new(prompt_lines),
            product_names: Arc::new(product_names),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn applying(&self, direction: Direction) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .filter(move |r| r.directions.contains(&direction))
    }

    /// The input rails on a client message.
    pub fn input(&self, text: &str, language: Language) -> InputVerdict {
        let started = Instant::now();
        let normalized = Normalized::new(text);
        let found = pii::find(&normalized);
        let mut decisions = Vec::new();
        // Identifiers out first: placeholders in the original text, back to front.
        let mut redacted = text.to_string();
        let mut replaced: Vec<(std::ops::Range<usize>, String)> = Vec::new();
        for f in &found {
            let Some(rule) = self
                .applying(Direction::Input)
                .find(|r| r.check == Some(Check::Pii(f.kind)))
            else {
                continue;
            };
            let placeholder = rule
                .placeholder
                .clone()
                .unwrap_or_else(|| "[REDACTED]".into());
            replaced.push((
                normalized.original_range(f.start, f.end),
                placeholder.clone(),
            ));
            decisions.push(Decision {
                rule: rule.id.clone(),
                action: rule.action,
                span: placeholder,
            });
        }
        for (range, placeholder) in replaced.iter().rev() {
            if range.end > range.start {
                redacted.replace_range(range.clone(), placeholder);
            }
        }
        // Then the patterns, on the redacted text and on anything base64 hides in it.
        let mut haystack = Normalized::new(&redacted).text;
        for m in base64_runs().find_iter(&redacted) {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(m.as_str())
                && let Ok(decoded) = String::from_utf8(bytes)
                && decoded
                    .chars()
                    .all(|c| !c.is_control() || c.is_whitespace())
            {
                haystack.push('\n');
                haystack.push_str(&Normalized::new(&decoded).text);
            }
        }
        let mut blocked = None;
        let mut escalated = None;
        for rule in self.applying(Direction::Input) {
            if rule.check.is_some() {
                continue;
            }
            let Some(span) = rule.patterns.iter().find_map(|p| p.find(&haystack)) else {
                continue;
            };
            decisions.push(Decision {
                rule: rule.id.clone(),
                action: rule.action,
                span: span.as_str().chars().take(80).collect(),
            });
            match rule.action {
                Action::Block if blocked.is_none() => {
                    let reply = rule.reply.as_ref().map(|r| r.get(language).to_string());
                    blocked = Some((rule.id.clone(), reply.unwrap_or_default()));
                }
                Action::Escalate if escalated.is_none() => escalated = Some(rule.id.clone()),
                _ => {}
            }
        }
        InputVerdict {
            redacted,
            decisions,
            blocked,
            escalated,
            micros: started.elapsed().as_secs_f64() * 1e6,
        }
    }

    /// The output rails on a whole reply (`direction` Output), or on an advisor's
    /// message (Advisor: every decision is a flag).
    pub fn output(
        &self,
        text: &str,
        language: Language,
        context: &OutputContext<'_>,
        direction: Direction,
    ) -> OutputVerdict {
        let started = Instant::now();
        let mut decisions = Vec::new();
        let grounded = grounded_numbers(context);
        for sentence in clauses(text) {
            self.sentence_decisions(&sentence, context, &grounded, direction, &mut decisions);
        }
        // An encoded copy of the instructions is still a leak.
        for decoded in decoded_base64(text) {
            for rule in self.applying(direction) {
                if rule.check == Some(Check::SystemPrompt)
                    && let Some(span) = self.prompt_leak(rule, &Normalized::new(&decoded).text)
                {
                    decisions.push(Decision {
                        rule: rule.id.clone(),
                        action: rule.action,
                        span,
                    });
                }
            }
        }
        let whole = Normalized::new(text).text;
        let mut shown = text.to_string();
        // A reply that will be replaced needs no disclosure.
        let replaced = decisions
            .iter()
            .any(|d| d.action == Action::Block || d.action == Action::Escalate);
        let parts: Vec<String> = clauses(text)
            .iter()
            .map(|c| Normalized::new(c).text)
            .collect();
        for rule in self.applying(direction) {
            // Rules that look at the whole reply: disclosures that must be present.
            if rule.action != Action::Rewrite || rule.unless_present.is_none() {
                continue;
            }
            // Found in a clause that its exemptions do not excuse.
            let hit = parts
                .iter()
                .filter(|c| !rule.exempt.as_ref().is_some_and(|e| e.is_match(c)))
                .find_map(|c| rule.patterns.iter().find_map(|p| p.find(c)));
            let present = rule
                .unless_present
                .as_ref()
                .is_some_and(|s| s.is_match(&whole));
            if let Some(span) = hit
                && !present
            {
                decisions.push(Decision {
                    rule: rule.id.clone(),
                    action: if direction == Direction::Advisor {
                        Action::Flag
                    } else {
                        rule.action
                    },
                    span: span.as_str().chars().take(80).collect(),
                });
                if direction == Direction::Output
                    && !replaced
                    && let Some(d) = &rule.disclosure
                {
                    shown.push_str(if language == Language::ZhCn {
                        "\n"
                    } else {
                        "\n\n"
                    });
                    shown.push_str(d.get(language));
                }
            }
        }
        let blocked = decisions
            .iter()
            .find(|d| d.action == Action::Block || d.action == Action::Escalate)
            .map(|d| {
                let handoff = d.action == Action::Escalate
                    || self.rules.iter().any(|r| r.id == d.rule && r.handoff);
                (d.rule.clone(), handoff)
            });
        OutputVerdict {
            text: shown,
            decisions,
            blocked,
            micros: started.elapsed().as_secs_f64() * 1e6,
        }
    }

    /// The block rules on one sentence of a reply being streamed: `Some(rule)` when it
    /// must not be shown. `grounded` is [`grounded_numbers`] of the context, computed
    /// once per reply.
    pub fn sentence(
        &self,
        sentence: &str,
        context: &OutputContext<'_>,
        grounded: &HashSet<String>,
    ) -> Option<String> {
        let mut decisions = Vec::new();
        for clause in clauses(sentence) {
            self.sentence_decisions(
                &clause,
                context,
                grounded,
                Direction::Output,
                &mut decisions,
            );
        }
        decisions
            .into_iter()
            .find(|d| d.action == Action::Block || d.action == Action::Escalate)
            .map(|d| d.rule)
    }

    fn sentence_decisions(
        &self,
        sentence: &str,
        context: &OutputContext<'_>,
        grounded: &HashSet<String>,
        direction: Direction,
        out: &mut Vec<Decision>,
    ) {
        let n = Normalized::new(sentence);
        let text = n.text.as_str();
        for rule in self.applying(direction) {
            if rule.unless_present.is_some() {
                continue;
            }
            if rule.exempt.as_ref().is_some_and(|e| e.is_match(text)) {
                continue;
            }
            if rule.exempt_check == Some(Exemption::PrincipalProtectedProduct)
                && self.names_protected_product(text)
            {
                continue;
            }
            let span = match rule.check {
                None => rule
                    .patterns
                    .iter()
                    .find_map(|p| p.find(text))
                    .map(|m| m.as_str().chars().take(80).collect::<String>()),
                Some(Check::Pii(kind)) => pii::find(&n)
                    .into_iter()
                    .find(|f| f.kind == kind)
                    .map(|f| format!("[{:?}]", f.kind).to_uppercase()),
                Some(Check::AnyPii) => pii::find(&n)
                    .into_iter()
                    .next()
                    .map(|f| format!("[{:?}]", f.kind).to_uppercase()),
                Some(Check::Suitability) => self.unsuitable(text, context.max_product),
                Some(Check::UngroundedFigures) => {
                    let bytes = text.as_bytes();
                    figures()
                        .find_iter(text)
                        // Part of a longer number (an order or ID number): not a figure.
                        .filter(|m| {
                            (m.start() == 0 || !bytes[m.start() - 1].is_ascii_digit())
                                && (m.end() == bytes.len() || !bytes[m.end()].is_ascii_digit())
                        })
                        .find(|m| {
                            numbers()
                                .find_iter(m.as_str())
                                .any(|x| !grounded.contains(&canonical(x.as_str())))
                        })
                        .map(|m| m.as_str().to_string())
                }
                Some(Check::SystemPrompt) => self.prompt_leak(rule, text),
            };
            if let Some(span) = span {
                out.push(Decision {
                    rule: rule.id.clone(),
                    action: if direction == Direction::Advisor {
                        Action::Flag
                    } else {
                        rule.action
                    },
                    span,
                });
            }
        }
    }

    /// A reply that talks about or quotes the instructions.
    fn prompt_leak(&self, rule: &Rule, text: &str) -> Option<String> {
        rule.patterns
            .iter()
            .find_map(|p| p.find(text))
            .map(|m| m.as_str().to_string())
            .or_else(|| {
                self.prompt_lines
                    .iter()
                    .find(|l| text.contains(l.as_str()))
                    .map(|l| l.chars().take(40).collect())
            })
    }

    fn mentioned(&self, text: &str) -> Vec<&crate::knowledge::Product> {
        let ids: Vec<String> = product_ids()
            .find_iter(text)
            .map(|m| m.as_str().to_ascii_uppercase())
            .collect();
        self.product_names
            .iter()
            .filter(|(id, zh, en)| {
                ids.contains(id) || text.contains(zh.as_str()) || text.contains(en.as_str())
            })
            .filter_map(|(id, _, _)| self.catalog.get(id))
            .collect()
    }

    fn names_protected_product(&self, text: &str) -> bool {
        self.mentioned(text)
            .iter()
            .any(|p| p.sheet.principal_protected)
    }

    /// A product encouraged above the client's level (or with no profile at all).
    fn unsuitable(&self, text: &str, max_product: Option<&str>) -> Option<String> {
        let products = self.mentioned(text);
        if products.is_empty() || negated().is_match(text) {
            return None;
        }
        match max_product {
            None => recommending()
                .is_match(text)
                .then(|| products[0].sheet.id.clone()),
            Some(max) => products
                .iter()
                .find(|p| above(&p.sheet, max))
                .map(|p| format!("{} ({})", p.sheet.id, p.sheet.risk_level)),
        }
    }
}

/// A reply cut into sentences and clauses (at semicolons), each judged on its own: a
/// disclaimer or a protected product in one clause does not excuse another.
fn clauses(text: &str) -> Vec<String> {
    crate::knowledge::document::sentences(text)
        .into_iter()
        .flat_map(|s| {
            s.split(['；', ';'])
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The texts base64 runs of `text` decode to.
fn decoded_base64(text: &str) -> Vec<String> {
    base64_runs()
        .find_iter(text)
        .filter_map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m.as_str())
                .ok()
        })
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .filter(|s| s.chars().all(|c| !c.is_control() || c.is_whitespace()))
        .collect()
}

/// Whether a product is rated above a client's highest allowed level.
fn above(sheet: &crate::knowledge::products::Sheet, max: &str) -> bool {
    if let Some(sri) = max.strip_prefix("SRI") {
        return sri.parse::<u8>().is_ok_and(|m| sheet.sri > m);
    }
    let rank = |l: &str| l.trim_start_matches('R').parse::<u8>().ok();
    match (
        rank(&sheet.risk_level),
        max.strip_prefix('R').and_then(|m| m.parse::<u8>().ok()),
    ) {
        (Some(p), Some(m)) => p > m,
        _ => true,
    }
}

/// Every number the sources and the client's words contain.
pub fn grounded_numbers(context: &OutputContext<'_>) -> HashSet<String> {
    let mut set = HashSet::new();
    for text in context
        .sources
        .iter()
        .map(String::as_str)
        .chain([context.client_words])
    {
        let n = Normalized::new(text);
        for m in numbers().find_iter(&n.text) {
            set.insert(canonical(m.as_str()));
        }
    }
    set
}
