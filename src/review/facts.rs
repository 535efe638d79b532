//! What a bot turn touched, as rows to search by: the guardrail rules that fired, the
//! products it presented or was asked about, and the client's risk level it worked
//! with. Written with the turn record, in its transaction.

use std::collections::BTreeSet;

use serde_json::Value;

/// `(kind, value)` pairs of a turn record's detail: `rule`, `product`, `level`.
pub fn of_turn(detail: &Value) -> BTreeSet<(&'static str, String)> {
    let mut out = BTreeSet::new();
    walk(detail, &mut out);
    // The level as the answer's prompt stated it ("C3 (稳健型)"), or as scored.
    let level = detail
        .get("client_level")
        .and_then(Value::as_str)
        .and_then(|l| l.split_whitespace().next())
        .or_else(|| detail.pointer("/assessment/level").and_then(Value::as_str))
        .filter(|l| is_level(l));
    if let Some(level) = level {
        out.insert(("level", level.to_string()));
    }
    out
}

fn is_level(l: &str) -> bool {
    l.len() == 2 && l.starts_with('C') && l.as_bytes()[1].is_ascii_digit()
}

fn walk(value: &Value, out: &mut BTreeSet<(&'static str, String)>) {
    match value {
        Value::Object(map) => {
            // A guardrail decision: `{rule, action, span}`.
            if let (Some(Value::String(rule)), Some(_)) = (map.get("rule"), map.get("action")) {
                out.insert(("rule", rule.clone()));
            }
            if let Some(Value::String(product)) = map.get("product_id") {
                out.insert(("product", product.clone()));
            }
            // The prompt as sent repeats the sources' text; nothing to find there.
            for (key, v) in map {
                if key != "prompt_sent" {
                    walk(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
        _ => {}
    }
}

/// Stores the facts of turn `turn_id`.
pub async fn record(
    conn: &mut sqlx::AnyConnection,
    conversation: &str,
    turn_id: &str,
    at: i64,
    detail: &Value,
) -> Result<(), sqlx::Error> {
    for (kind, value) in of_turn(detail) {
        sqlx::query(
            "INSERT INTO turn_facts (conversation_id, turn_id, kind, value, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(conversation)
        .bind(turn_id)
        .bind(kind)
        .bind(value)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_products_and_the_level_are_found_wherever_the_record_keeps_them() {
        let detail = json!({
            "client_level": "C3 (稳健型)",
            "retrieval": { "hits": [{ "product_id": "P-001", "score": 1.0 }, { "product_id": null }] },
            "guardrails": { "output": [{ "rule": "OUT-GUARANTEE", "action": "rewrite", "span": "保本" }] },
            "prompt_sent": [{ "content": "{\"rule\": \"X\", \"action\": \"y\"}" }],
        });
        let facts: Vec<_> = of_turn(&detail).into_iter().collect();
        assert_eq!(
            facts,
            [
                ("level", "C3".to_string()),
                ("product", "P-001".to_string()),
                ("rule", "OUT-GUARANTEE".to_string()),
            ]
        );
        let scored = json!({ "assessment": { "level": "C2" }, "profile_id": "p" });
        assert!(of_turn(&scored).contains(&("level", "C2".to_string())));
        assert!(of_turn(&json!({ "client_level": "未评估" })).is_empty());
    }
}
