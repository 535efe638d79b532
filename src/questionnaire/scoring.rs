//! From a complete answer set to a category: points, the level their sum falls in, the
//! override rules that cap it, and the answers that drove the result.

use serde::{Deserialize, Serialize};

use super::definition::{LiquidityNeed, Pack, Text};

/// The option chosen for one question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub question_id: String,
    pub option_id: String,
}

/// An override rule that lowered the category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub question_id: String,
    pub option_id: String,
    /// The level the answer caps the category at.
    pub cap: String,
    pub reason: Text,
}

/// An answer that weighed on the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    pub question_id: String,
    pub option_id: String,
    pub points: u32,
    pub max_points: u32,
    /// True when it pulled the category down.
    pub limiting: bool,
}

/// The outcome of a questionnaire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub questionnaire_id: String,
    pub questionnaire_version: String,
    pub score: u32,
    /// The level the score alone falls in.
    pub score_level: String,
    /// The final level, after overrides.
    pub level: String,
    /// The highest product level the client may be offered.
    pub max_product: String,
    pub overrides: Vec<Override>,
    pub drivers: Vec<Driver>,
    pub horizon_months: Option<u32>,
    pub liquidity_need: Option<LiquidityNeed>,
    /// Lower bound of the client's investable assets, from the chosen bracket.
    pub investable_assets: Option<u64>,
    /// Upper bound of that bracket (the next bracket's lower bound); None when open-ended.
    pub investable_assets_max: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoringError {
    #[error("question {0} has no answer")]
    Missing(String),
    #[error("question {0} has no option {1}")]
    UnknownOption(String, String),
}

/// The answers that score highest: for every question the option with the most points
/// among those that cap nothing (the boldest client a pack can assess).
pub fn boldest_answers(pack: &Pack) -> Vec<Answer> {
    pack.questions
        .iter()
        .map(|q| Answer {
            question_id: q.id.clone(),
            option_id: q
                .options
                .iter()
                .filter(|o| o.cap.is_none())
                .max_by_key(|o| o.points)
                .map(|o| o.id.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// Scores a complete answer set.
pub fn assess(pack: &Pack, answers: &[Answer]) -> Result<Assessment, ScoringError> {
    let mut score = 0;
    let mut overrides = Vec::new();
    let mut drivers = Vec::new();
    let mut horizon_months = None;
    let mut liquidity_need = None;
    let mut investable_assets = None;
    let mut investable_assets_max = None;
    for question in &pack.questions {
        let answer = answers
            .iter()
            .find(|a| a.question_id == question.id)
            .ok_or_else(|| ScoringError::Missing(question.id.clone()))?;
        let option = question
            .options
            .iter()
            .find(|o| o.id == answer.option_id)
            .ok_or_else(|| {
                ScoringError::UnknownOption(question.id.clone(), answer.option_id.clone())
            })?;
        score += option.points;
        let max_points = question.options.iter().map(|o| o.points).max().unwrap_or(0);
        let min_points = question.options.iter().map(|o| o.points).min().unwrap_or(0);
        if max_points > min_points {
            drivers.push(Driver {
                question_id: question.id.clone(),
                option_id: option.id.clone(),
                points: option.points,
                max_points,
                limiting: (option.points - min_points) * 2 < (max_points - min_points),
            });
        }
        if let (Some(cap), Some(reason)) = (&option.cap, &option.cap_reason) {
            overrides.push(Override {
                question_id: question.id.clone(),
                option_id: option.id.clone(),
                cap: cap.clone(),
                reason: reason.clone(),
            });
        }
        horizon_months = option.horizon_months.or(horizon_months);
        liquidity_need = option.liquidity_need.or(liquidity_need);
        if let Some(floor) = option.investable_assets {
            investable_assets = Some(floor);
            investable_assets_max = question
                .options
                .iter()
                .filter_map(|o| o.investable_assets)
                .filter(|v| *v > floor)
                .min();
        }
    }
    let score_level = pack
        .levels
        .iter()
        .find(|l| (l.min_score..=l.max_score).contains(&score))
        .expect("validated: levels cover every possible score");
    let mut level = score_level;
    for o in &overrides {
        let cap = pack.level(&o.cap).expect("validated: caps name levels");
        if pack.level_rank(&cap.id) < pack.level_rank(&level.id) {
            level = cap;
        }
    }
    // The answers that weighed most: the furthest from the middle, limiting first when
    // the result is in the lower half of the scale.
    let lower_half = pack.level_rank(&level.id).unwrap_or(0) * 2 < pack.levels.len();
    drivers.sort_by(|a, b| {
        let weight = |d: &Driver| {
            let ratio = d.points as f64 / d.max_points.max(1) as f64;
            if lower_half { ratio } else { -ratio }
        };
        weight(a)
            .partial_cmp(&weight(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    drivers.truncate(3);
    Ok(Assessment {
        questionnaire_id: pack.id.clone(),
        questionnaire_version: pack.version.clone(),
        score,
        score_level: score_level.id.clone(),
        level: level.id.clone(),
        max_product: level.max_product.clone(),
        overrides,
        drivers,
        horizon_months,
        liquidity_need,
        investable_assets,
        investable_assets_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questionnaire::definition::load_packs;

    fn packs() -> Vec<Pack> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/questionnaires");
        load_packs(&dir, false).unwrap()
    }

    /// Answers without any capping option that add up to exactly `target`, when possible.
    fn answers_scoring(pack: &Pack, target: u32) -> Option<Vec<Answer>> {
        let mut remaining = target;
        let mut answers = Vec::new();
        let floors: Vec<u32> = pack
            .questions
            .iter()
            .map(|q| {
                q.options
                    .iter()
                    .filter(|o| o.cap.is_none())
                    .map(|o| o.points)
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        let mut floor_left: u32 = floors.iter().sum();
        for (q, floor) in pack.questions.iter().zip(&floors) {
            floor_left -= floor;
            let budget = remaining.checked_sub(floor_left)?;
            let option = q
                .options
                .iter()
                .filter(|o| o.cap.is_none() && o.points <= budget)
                .max_by_key(|o| o.points)?;
            remaining -= option.points;
            answers.push(Answer {
                question_id: q.id.clone(),
                option_id: option.id.clone(),
            });
        }
        (remaining == 0).then_some(answers)
    }

    #[test]
    fn every_boundary_score_lands_in_its_level_in_both_packs() {
        for pack in packs() {
            let mut checked = 0;
            for level in &pack.levels {
                for score in [level.min_score, level.max_score] {
                    let Some(answers) = answers_scoring(&pack, score) else {
                        continue;
                    };
                    let result = assess(&pack, &answers).unwrap();
                    assert_eq!(result.score, score, "{} {}", pack.id, level.id);
                    assert_eq!(result.level, level.id, "{}: score {score}", pack.id);
                    assert_eq!(result.max_product, level.max_product);
                    assert!(result.overrides.is_empty());
                    checked += 1;
                }
            }
            // Only the very lowest scores may need a capping answer to reach.
            assert!(
                checked >= pack.levels.len() * 2 - 1,
                "{}: {checked} boundaries reachable",
                pack.id
            );
        }
    }

    #[test]
    fn every_override_rule_caps_the_level_even_with_the_best_other_answers() {
        for pack in packs() {
            let best = boldest_answers(&pack);
            assert_eq!(
                assess(&pack, &best).unwrap().level,
                pack.levels.last().unwrap().id,
                "{}",
                pack.id
            );
            let mut rules = 0;
            for (i, q) in pack.questions.iter().enumerate() {
                for o in q.options.iter().filter(|o| o.cap.is_some()) {
                    let mut answers = best.clone();
                    answers[i].option_id = o.id.clone();
                    let result = assess(&pack, &answers).unwrap();
                    let cap = o.cap.as_deref().unwrap();
                    assert_eq!(result.level, cap, "{} {}:{}", pack.id, q.id, o.id);
                    assert_ne!(result.score_level, cap, "the score alone is higher");
                    assert_eq!(result.overrides.len(), 1);
                    assert_eq!(result.overrides[0].question_id, q.id);
                    rules += 1;
                }
            }
            assert!(rules >= 1, "{} has override rules", pack.id);
        }
    }

    /// Every question answered with option `letter` (or its last option when it has fewer).
    fn all(pack: &Pack, letter: &str) -> Vec<Answer> {
        pack.questions
            .iter()
            .map(|q| Answer {
                question_id: q.id.clone(),
                option_id: q
                    .options
                    .iter()
                    .find(|o| o.id == letter)
                    .unwrap_or_else(|| q.options.last().unwrap())
                    .id
                    .clone(),
            })
            .collect()
    }

    #[test]
    fn a_table_of_complete_answer_sets() {
        let packs = packs();
        // (pack, every answer, score, level by score, final level, overrides applied)
        let table = [
            ("cn-fund-risk", "a", 11, "C1", "C1", 3),
            ("cn-fund-risk", "b", 22, "C2", "C2", 0),
            ("cn-fund-risk", "c", 33, "C3", "C3", 0),
            ("cn-fund-risk", "d", 38, "C4", "C4", 0),
            ("cn-fund-risk", "e", 44, "C4", "C1", 1), // borrowed money caps at C1
            ("eu-mifid-sri", "a", 3, "P1", "P1", 2),
            ("eu-mifid-sri", "b", 14, "P2", "P2", 0),
            ("eu-mifid-sri", "c", 21, "P3", "P3", 0),
            ("eu-mifid-sri", "d", 30, "P4", "P4", 0),
            ("eu-mifid-sri", "e", 38, "P5", "P5", 0),
        ];
        for (id, letter, score, score_level, level, overrides) in table {
            let pack = packs.iter().find(|p| p.id == id).unwrap();
            let result = assess(pack, &all(pack, letter)).unwrap();
            assert_eq!(
                (
                    result.score,
                    result.score_level.as_str(),
                    result.level.as_str(),
                    result.overrides.len()
                ),
                (score, score_level, level, overrides),
                "{id} all {letter}"
            );
            assert_eq!(result.max_product, pack.level(level).unwrap().max_product);
        }
    }

    #[test]
    fn the_strictest_of_several_caps_wins_and_missing_answers_are_refused() {
        let pack = packs()
            .into_iter()
            .find(|p| p.id == "cn-fund-risk")
            .unwrap();
        let answers: Vec<Answer> = pack
            .questions
            .iter()
            .map(|q| {
                let capped = q
                    .options
                    .iter()
                    .filter(|o| o.cap.is_some())
                    .min_by_key(|o| pack.level_rank(o.cap.as_deref().unwrap()));
                let chosen =
                    capped.unwrap_or_else(|| q.options.iter().max_by_key(|o| o.points).unwrap());
                Answer {
                    question_id: q.id.clone(),
                    option_id: chosen.id.clone(),
                }
            })
            .collect();
        let result = assess(&pack, &answers).unwrap();
        assert_eq!(result.level, "C1");
        assert!(result.overrides.len() >= 2);
        assert_eq!(
            assess(&pack, &answers[1..]).unwrap_err(),
            ScoringError::Missing(pack.questions[0].id.clone())
        );
    }
}
