//! The offline composer: without an LLM the bot still answers, from the retrieved
//! knowledge itself. An answer is the few sentences of the retrieved chunks that best
//! cover the question's terms (weighted by how rare each term is among the candidates),
//! each followed by its citation; a recommendation lists the suitable products with the
//! key facts of their sheets. Nothing is made up: every sentence is quoted from a
//! source, every figure from a sheet.

use std::collections::HashSet;

/// A candidate sentence: the hit it comes from and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    /// Index of the hit in the list given.
    pub hit: usize,
    pub text: String,
}

/// Most sentences an offline answer quotes.
const MAX_SENTENCES: usize = 3;
/// Hits an offline answer draws sentences from.
const MAX_HITS: usize = 3;

/// Chooses the sentences of `hits` (chunk texts, most relevant first) that answer a
/// question with the term set `question`; `terms` maps text to its term set (the same
/// analyser the index uses). `None` when nothing answers it.
pub fn pick_sentences(
    question: &HashSet<u32>,
    hits: &[&str],
    terms: &dyn Fn(&str) -> HashSet<u32>,
) -> Option<Vec<Picked>> {
    if question.is_empty() {
        return None;
    }
    struct Candidate {
        hit: usize,
        position: usize,
        text: String,
        terms: HashSet<u32>,
    }
    let mut candidates = Vec::new();
    for (hit, text) in hits.iter().enumerate().take(MAX_HITS) {
        for (position, sentence) in crate::knowledge::document::sentences(text)
            .into_iter()
            .enumerate()
        {
            let Some(clean) = answer_sentence(&sentence) else {
                continue;
            };
            let found: HashSet<u32> = terms(&clean).intersection(question).copied().collect();
            if !found.is_empty() {
                candidates.push(Candidate {
                    hit,
                    position,
                    text: clean,
                    terms: found,
                });
            }
        }
    }
    // A term found in few candidate sentences says more than one found in all of them.
    let weight = |t: &u32| 1.0 / candidates.iter().filter(|c| c.terms.contains(t)).count() as f64;
    let total: f64 = question.iter().map(|t| weight(t).min(1.0)).sum();
    let score = |c: &Candidate| {
        let matched: f64 = c.terms.iter().map(weight).sum();
        // The retrieval's ranking counts too: a sentence of a lower hit must cover
        // clearly more of the question to win.
        matched / total - c.hit as f64 * 0.08
    };
    let needed = if question.len() <= 2 { 1 } else { 2 };
    let mut ranked: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.terms.len() >= needed)
        .map(|c| (score(c), c))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best = ranked.first()?.0;
    let mut chosen: Vec<&Candidate> = Vec::new();
    let mut covered: HashSet<u32> = HashSet::new();
    for (s, c) in ranked {
        if chosen.len() == MAX_SENTENCES || s < best * 0.5 {
            break;
        }
        // A sentence must add a term not yet covered (no padding, no repeats).
        if !chosen.is_empty() && c.terms.is_subset(&covered) {
            continue;
        }
        covered.extend(&c.terms);
        chosen.push(c);
    }
    chosen.sort_by_key(|c| (c.hit, c.position));
    Some(
        chosen
            .into_iter()
            .map(|c| Picked {
                hit: c.hit,
                text: c.text.clone(),
            })
            .collect(),
    )
}

/// A sentence as it can be quoted: list markers and emphasis removed; headings,
/// questions, table rows and fragments refused.
fn answer_sentence(sentence: &str) -> Option<String> {
    let s = sentence.trim();
    if s.starts_with('#') || s.starts_with('|') || s.starts_with("+++") {
        return None;
    }
    let s = s
        .trim_start_matches(['-', '*', '•', '>'])
        .trim()
        .replace("**", "");
    let letters = s.chars().filter(|c| c.is_alphanumeric()).count();
    if letters < 8 || s.ends_with('？') || s.ends_with('?') || s.ends_with(':') || s.ends_with('：')
    {
        return None;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> HashSet<u32> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 2)
            .map(|w| {
                let w = w.to_lowercase();
                let w = w.trim_end_matches('s');
                w.bytes()
                    .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            })
            .collect()
    }

    #[test]
    fn picks_the_sentences_that_answer_and_cites_their_hit() {
        let hits = [
            "## How long does redemption take?\nMoney market funds pay out on T+1. Bond funds usually take T+2 to T+3 days to pay redemption proceeds. Holidays delay settlement.",
            "Subscription fees are charged when you buy. The fee rate falls with the amount.",
        ];
        let question = words("How many days does a bond fund redemption take?");
        let picked = pick_sentences(&question, &hits, &words).expect("an answer");
        assert_eq!(picked[0].hit, 0);
        assert!(
            picked[0].text.starts_with("Bond funds usually take"),
            "{picked:?}"
        );
        assert!(picked.iter().all(|p| !p.text.ends_with('?')));
    }

    #[test]
    fn nothing_relevant_means_no_answer() {
        let hits = ["Subscription fees are charged when you buy a fund share."];
        assert_eq!(
            pick_sentences(&words("weather tomorrow in Paris"), &hits, &words),
            None
        );
        assert_eq!(pick_sentences(&HashSet::new(), &hits, &words), None);
    }
}
