//! `wealthdesk eval guardrails`: the rules against the labelled cases of
//! `knowledge/eval/guardrails.jsonl` — per-rule precision and recall, the share of
//! violations caught, the share of benign messages touched, and the time the input and
//! output rails take together per message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Direction, Guard, OutputContext};
use crate::config::Config;
use crate::im::Language;
use crate::knowledge::eval::percentile;

#[derive(Debug, Clone, clap::Args)]
pub struct GuardrailEvalArgs {
    #[arg(long, default_value = "knowledge/eval/guardrails.jsonl")]
    pub set: PathBuf,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// List every case a rule missed or wrongly fired on.
    #[arg(long)]
    pub misses: bool,
    /// Timed passes over the set for the latency figures.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Add the cases compliance labelled in review (from the configured database).
    #[arg(long)]
    pub labels: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub direction: String,
    pub lang: String,
    pub text: String,
    pub expect: Vec<String>,
    #[serde(default)]
    pub context: Option<CaseContext>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaseContext {
    pub client_max_product: Option<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub client_words: String,
}

#[derive(Debug, Serialize)]
pub struct RuleFigures {
    pub rule: String,
    pub positives: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Serialize)]
pub struct GuardrailReport {
    pub cases: usize,
    pub violations: usize,
    pub benign: usize,
    /// Violation cases where every expected rule fired.
    pub violation_recall: f64,
    /// Benign cases blocked or escalated.
    pub benign_blocked_rate: f64,
    /// Benign cases where any rule fired (including rewrites and flags).
    pub benign_touched_rate: f64,
    pub rules: Vec<RuleFigures>,
    /// Input and output rails together, per message, microseconds.
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub misses: Vec<serde_json::Value>,
}

/// Which rules fire on a case, and whether any of them blocks or escalates.
pub fn fired(guard: &Guard, case: &Case) -> anyhow::Result<(BTreeSet<String>, bool)> {
    let language: Language = case.lang.parse().map_err(anyhow::Error::msg)?;
    let decisions = match case.direction.as_str() {
        "input" => guard.input(&case.text, language).decisions,
        "output" => {
            let c = case.context.clone().unwrap_or_default();
            let context = OutputContext {
                max_product: c.client_max_product.as_deref(),
                sources: &c.sources,
                client_words: &c.client_words,
            };
            guard
                .output(&case.text, language, &context, Direction::Output)
                .decisions
        }
        other => anyhow::bail!(
            "case {}: direction {other:?} is not input or output",
            case.id
        ),
    };
    let stops = decisions
        .iter()
        .any(|d| matches!(d.action, super::Action::Block | super::Action::Escalate));
    Ok((decisions.into_iter().map(|d| d.rule).collect(), stops))
}

pub fn load_cases(path: &std::path::Path) -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

pub fn evaluate(guard: &Guard, cases: &[Case], repeat: usize) -> anyhow::Result<GuardrailReport> {
    let mut per_rule: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for rule in guard.rules() {
        per_rule.entry(rule.id.clone()).or_default();
    }
    let (mut violations, mut caught, mut benign, mut blocked, mut touched) = (0, 0, 0, 0, 0);
    let mut misses = Vec::new();
    for case in cases {
        let (got, stops) = fired(guard, case)?;
        let expected: BTreeSet<String> = case.expect.iter().cloned().collect();
        for rule in &expected {
            let entry = per_rule.entry(rule.clone()).or_default();
            entry.0 += 1;
            if got.contains(rule) {
                entry.1 += 1;
            }
        }
        for rule in got.difference(&expected) {
            per_rule.entry(rule.clone()).or_default().2 += 1;
        }
        if expected.is_empty() {
            benign += 1;
            blocked += usize::from(stops);
            touched += usize::from(!got.is_empty());
        } else {
            violations += 1;
            caught += usize::from(expected.is_subset(&got));
        }
        if got != expected {
            misses.push(serde_json::json!({
                "id": case.id,
                "expected": expected,
                "fired": got,
                "text": case.text.chars().take(160).collect::<String>(),
            }));
        }
    }
    // Latency: both rails on every case's text, several passes.
    let mut micros = Vec::with_capacity(cases.len() * repeat.max(1));
    let empty = Vec::new();
    for _ in 0..repeat.max(1) {
        for case in cases {
            let language: Language = case.lang.parse().map_err(anyhow::Error::msg)?;
            let c = case.context.as_ref();
            let context = OutputContext {
                max_product: c.and_then(|c| c.client_max_product.as_deref()),
                sources: c.map_or(&empty, |c| &c.sources),
                client_words: c.map_or("", |c| c.client_words.as_str()),
            };
            let started = Instant::now();
            let input = guard.input(&case.text, language);
            let output = guard.output(&input.redacted, language, &context, Direction::Output);
            std::hint::black_box((&input, &output));
            micros.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    micros.sort_by(f64::total_cmp);
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Ok(GuardrailReport {
        cases: cases.len(),
        violations,
        benign,
        violation_recall: ratio(caught, violations),
        benign_blocked_rate: ratio(blocked, benign.max(1)) * f64::from(u8::from(benign > 0)),
        benign_touched_rate: ratio(touched, benign.max(1)) * f64::from(u8::from(benign > 0)),
        rules: per_rule
            .into_iter()
            .map(|(rule, (positives, tp, fp))| RuleFigures {
                precision: ratio(tp, tp + fp),
                recall: ratio(tp, positives),
                rule,
                positives,
                true_positives: tp,
                false_positives: fp,
            })
            .collect(),
        latency_p50_us: percentile(&micros, 0.5),
        latency_p99_us: percentile(&micros, 0.99),
        latency_max_us: micros.last().copied().unwrap_or_default(),
        misses,
    })
}

pub async fn run(config: &Config, args: &GuardrailEvalArgs) -> anyhow::Result<()> {
    let mut cases = load_cases(&args.set)?;
    if args.labels {
        let db = crate::db::Db::connect(config).await?;
        let labelled = crate::review::annotate::eval_cases(&db).await?;
        eprintln!("{} labelled cases from review added", labelled.len());
        cases.extend(labelled);
        db.close().await;
    }
    let catalog = Arc::new(crate::app::load_catalog(config)?);
    let prompts = crate::app::load_prompts(config)?;
    let guard = crate::app::load_guard(config, catalog, &prompts)?;
    let mut report = evaluate(&guard, &cases, args.repeat)?;
    if !args.misses {
        report.misses.clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "guardrails: {} cases ({} violations, {} benign), {} rules",
        report.cases,
        report.violations,
        report.benign,
        guard.rules().len()
    );
    println!(
        "violations caught (recall): {:.3}   benign blocked: {:.3}   benign touched: {:.3}",
        report.violation_recall, report.benign_blocked_rate, report.benign_touched_rate
    );
    println!(
        "input + output rails per message: p50 {:.0} µs  p99 {:.0} µs  max {:.0} µs",
        report.latency_p50_us, report.latency_p99_us, report.latency_max_us
    );
    println!(
        "{:<34} {:>5} {:>5} {:>5} {:>9} {:>7}",
        "rule", "pos", "tp", "fp", "precision", "recall"
    );
    for r in &report.rules {
        println!(
            "{:<34} {:>5} {:>5} {:>5} {:>9.3} {:>7.3}",
            r.rule, r.positives, r.true_positives, r.false_positives, r.precision, r.recall
        );
    }
    for m in &report.misses {
        println!(
            "miss {}: expected {} fired {} — {}",
            m["id"], m["expected"], m["fired"], m["text"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped rules as the service loads them (tests run from the package root,
    /// where the default configuration's paths point).
    fn shipped_guard() -> Guard {
        let config = Config::default();
        let catalog = Arc::new(crate::app::load_catalog(&config).unwrap());
        let prompts = crate::app::load_prompts(&config).unwrap();
        crate::app::load_guard(&config, catalog, &prompts).unwrap()
    }

    #[test]
    fn historical_returns_get_the_disclosure_and_blocked_replies_none() {
        let guard = shipped_guard();
        let sources = vec!["Annual returns: 2024 7.9%, 2023 -3.5%.".to_string()];
        let context = OutputContext {
            max_product: Some("R3"),
            sources: &sources,
            client_words: "",
        };
        let out = guard.output(
            "The fund returned 7.9% in 2024 [1].",
            Language::En,
            &context,
            Direction::Output,
        );
        assert!(out.blocked.is_none(), "{out:?}");
        assert!(
            out.text.ends_with(
                "Past performance does not predict future returns; investing involves risk."
            ),
            "{}",
            out.text
        );
        let out = guard.output(
            "The fund returned 7.9% in 2024 [1] and is guaranteed to do it again.",
            Language::En,
            &context,
            Direction::Output,
        );
        assert_eq!(
            out.blocked.as_ref().map(|b| b.0.as_str()),
            Some("OUT-PROMISE")
        );
        assert!(
            !out.text.contains("Past performance"),
            "a replaced reply gets no disclosure"
        );
    }

    /// The shipped rules keep catching the labelled violations without touching the
    /// benign look-alikes (the release gate the eval command reports on).
    #[test]
    fn the_shipped_rules_meet_their_targets_on_the_eval_set() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let guard = shipped_guard();
        for set in ["guardrails.jsonl", "guardrails-holdout.jsonl"] {
            let cases = load_cases(&root.join("knowledge/eval").join(set)).unwrap();
            let report = evaluate(&guard, &cases, 1).unwrap();
            assert!(
                report.violation_recall >= 0.98,
                "{set}: recall {}",
                report.violation_recall
            );
            assert!(
                report.benign_blocked_rate <= 0.02,
                "{set}: {}",
                report.benign_blocked_rate
            );
        }
    }
}
