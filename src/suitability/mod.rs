//! The suitability matcher: a pure function from (client profile, product) to eligible or
//! not, with every reason. Used to filter retrieval, to pick recommendations and by the
//! output guardrails, so one rule set decides everywhere.

use serde::{Deserialize, Serialize};

use crate::questionnaire::definition::{LiquidityNeed, Pack};

/// What the matcher needs to know about a client (from their current risk profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFacts {
    /// The client's category, e.g. `C3`.
    pub level: String,
    /// The highest product level that category may be offered, e.g. `R3`.
    pub max_product: String,
    pub horizon_months: Option<u32>,
    pub liquidity_need: Option<LiquidityNeed>,
    pub investable_assets_max: Option<u64>,
}

/// What the matcher needs to know about a product (from its sheet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductFacts {
    pub id: String,
    /// On the pack's product scale, e.g. `R4` or `SRI5`.
    pub risk_level: String,
    /// Months the money is locked after subscription.
    pub lockup_months: u32,
    /// Calendar days from a redemption request to cash.
    pub redemption_days: u32,
    /// Smallest subscription, in the pack's currency.
    pub minimum_investment: u64,
}

/// Why a product is not suitable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unsuitable {
    /// The product's risk is above the client's category.
    RiskAboveLevel {
        product_level: String,
        allowed_up_to: String,
    },
    /// The product is rated on a scale this questionnaire does not use.
    UnratedOnScale { product_level: String },
    /// The money would be locked longer than the client can invest.
    LockupBeyondHorizon {
        lockup_months: u32,
        horizon_months: u32,
    },
    /// The client may need the money sooner than the product pays out.
    RedemptionTooSlow {
        redemption_days: u32,
        liquidity_need: LiquidityNeed,
    },
    /// The minimum subscription exceeds the client's investable assets.
    MinimumAboveAssets {
        minimum_investment: u64,
        investable_assets_max: u64,
    },
}

/// The matcher's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub eligible: bool,
    pub reasons: Vec<Unsuitable>,
}

/// Longest redemption (days) acceptable for each liquidity need.
fn redemption_limit(need: LiquidityNeed) -> Option<u32> {
    match need {
        LiquidityNeed::High => Some(3),
        LiquidityNeed::Medium => Some(30),
        LiquidityNeed::Low => Some(180),
        LiquidityNeed::None => None,
    }
}

/// Decides whether `product` may be offered to `client` under `pack`'s scale.
pub fn assess(pack: &Pack, client: &ClientFacts, product: &ProductFacts) -> Verdict {
    let mut reasons = Vec::new();
    match (
        pack.product_rank(&product.risk_level),
        pack.product_rank(&client.max_product),
    ) {
        (Some(p), Some(allowed)) if p > allowed => reasons.push(Unsuitable::RiskAboveLevel {
            product_level: product.risk_level.clone(),
            allowed_up_to: client.max_product.clone(),
        }),
        (Some(_), Some(_)) => {}
        _ => reasons.push(Unsuitable::UnratedOnScale {
            product_level: product.risk_level.clone(),
        }),
    }
    if let Some(horizon) = client.horizon_months
        && product.lockup_months > horizon
    {
        reasons.push(Unsuitable::LockupBeyondHorizon {
            lockup_months: product.lockup_months,
            horizon_months: horizon,
        });
    }
    if let Some(need) = client.liquidity_need
        && let Some(limit) = redemption_limit(need)
        && (product.redemption_days > limit
            || (need == LiquidityNeed::High && product.lockup_months > 0))
    {
        reasons.push(Unsuitable::RedemptionTooSlow {
            redemption_days: product.redemption_days,
            liquidity_need: need,
        });
    }
    if let Some(assets) = client.investable_assets_max
        && product.minimum_investment > assets
    {
        reasons.push(Unsuitable::MinimumAboveAssets {
            minimum_investment: product.minimum_investment,
            investable_assets_max: assets,
        });
    }
    Verdict {
        eligible: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questionnaire::definition::load_packs;

    fn pack(id: &str) -> Pack {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/questionnaires");
        load_packs(&dir, false)
            .unwrap()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
    }

    fn client(pack: &Pack, level: &str) -> ClientFacts {
        ClientFacts {
            level: level.into(),
            max_product: pack.level(level).unwrap().max_product.clone(),
            horizon_months: None,
            liquidity_need: None,
            investable_assets_max: None,
        }
    }

    fn product(level: &str) -> ProductFacts {
        ProductFacts {
            id: "p".into(),
            risk_level: level.into(),
            lockup_months: 0,
            redemption_days: 1,
            minimum_investment: 1,
        }
    }

    #[test]
    fn the_full_c_by_r_matrix_of_the_default_pack() {
        let pack = pack("cn-fund-risk");
        let levels = ["C1", "C2", "C3", "C4", "C5"];
        let products = ["R1", "R2", "R3", "R4", "R5"];
        for (c, level) in levels.iter().enumerate() {
            for (r, product_level) in products.iter().enumerate() {
                let verdict = assess(&pack, &client(&pack, level), &product(product_level));
                assert_eq!(
                    verdict.eligible,
                    r <= c,
                    "{level} × {product_level}: {verdict:?}"
                );
                if r > c {
                    assert_eq!(
                        verdict.reasons,
                        [Unsuitable::RiskAboveLevel {
                            product_level: product_level.to_string(),
                            allowed_up_to: products[c].to_string()
                        }]
                    );
                }
            }
        }
    }

    #[test]
    fn the_lowest_category_may_only_be_offered_the_lowest_products() {
        for (id, lowest, allowed) in [("cn-fund-risk", "C1", "R1"), ("eu-mifid-sri", "P1", "SRI2")]
        {
            let pack = pack(id);
            let c = client(&pack, lowest);
            for (rank, level) in pack.product_levels.iter().enumerate() {
                let allowed_rank = pack.product_rank(allowed).unwrap();
                assert_eq!(
                    assess(&pack, &c, &product(level)).eligible,
                    rank <= allowed_rank,
                    "{id} {level}"
                );
            }
        }
    }

    #[test]
    fn each_non_risk_reason_on_its_own() {
        let pack = pack("cn-fund-risk");
        let mut c = client(&pack, "C5");
        c.horizon_months = Some(12);
        let mut locked = product("R2");
        locked.lockup_months = 36;
        assert_eq!(
            assess(&pack, &c, &locked).reasons,
            [Unsuitable::LockupBeyondHorizon {
                lockup_months: 36,
                horizon_months: 12
            }]
        );

        let mut c = client(&pack, "C5");
        c.liquidity_need = Some(LiquidityNeed::High);
        let mut slow = product("R2");
        slow.redemption_days = 7;
        assert_eq!(
            assess(&pack, &c, &slow).reasons,
            [Unsuitable::RedemptionTooSlow {
                redemption_days: 7,
                liquidity_need: LiquidityNeed::High
            }]
        );
        c.liquidity_need = Some(LiquidityNeed::Medium);
        assert!(assess(&pack, &c, &slow).eligible);

        let mut c = client(&pack, "C5");
        c.investable_assets_max = Some(100_000);
        let mut private = product("R5");
        private.minimum_investment = 1_000_000;
        assert_eq!(
            assess(&pack, &c, &private).reasons,
            [Unsuitable::MinimumAboveAssets {
                minimum_investment: 1_000_000,
                investable_assets_max: 100_000
            }]
        );

        let c = client(&pack, "C5");
        assert_eq!(
            assess(&pack, &c, &product("SRI3")).reasons,
            [Unsuitable::UnratedOnScale {
                product_level: "SRI3".into()
            }]
        );
    }
}
