//! Personal identifiers: mainland resident ID numbers (with their GB 11643 check
//! character), bank card numbers (Luhn), mobile numbers (mainland and international),
//! e-mail addresses and passport numbers. Found on normalised text, so full-width
//! digits, spaces or dashes inside numbers and zero-width characters do not hide them;
//! numbers that fail their check (order numbers, fund codes, amounts) are left alone.

use std::sync::OnceLock;

use regex::Regex;

use super::normalize::Normalized;

/// A kind of identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    CnId,
    BankCard,
    Phone,
    Email,
    Passport,
}

impl PiiKind {
    pub fn parse(s: &str) -> Option<PiiKind> {
        Some(match s {
            "cn_id" => PiiKind::CnId,
            "bank_card" => PiiKind::BankCard,
            "phone" => PiiKind::Phone,
            "email" => PiiKind::Email,
            "passport" => PiiKind::Passport,
            _ => return None,
        })
    }
}

/// One identifier found: its kind and its byte range in the normalised text.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

fn runs() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // Digits with single spaces or dashes between them, optionally after a + and
    // before an X (the ID check character).
    R.get_or_init(|| Regex::new(r"\+?[0-9](?:[ \-]?[0-9])*(?:[ \-]?x)?").expect("valid"))
}

fn emails() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}").expect("valid")
    })
}

fn passports() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"(?:passport|护照)(?:\s*(?:no\.?|number|num|#|号码|号))?[^a-z0-9]{0,8}([a-z](?:[ \-]?[0-9]){7,8})|([eg](?:[ \-]?[0-9]){8})",
        )
            .expect("valid")
    })
}

/// GB 11643: the 18th character of a resident ID number.
pub fn id_check_ok(id: &[u8]) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    if id.len() != 18 || !id[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = id[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| (d - b'0') as u32 * w)
        .sum();
    b"10X98765432"[(sum % 11) as usize] == id[17].to_ascii_uppercase()
}

pub fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut x = (d - b'0') as u32;
        if i % 2 == 1 {
            x *= 2;
            if x > 9 {
                x -= 9;
            }
        }
        sum += x;
    }
    sum.is_multiple_of(10)
}

fn mobile_cn(d: &[u8]) -> bool {
    let local = if d.len() == 15 && d.starts_with(b"0086") {
        &d[4..]
    } else if d.len() == 13 && d.starts_with(b"86") {
        &d[2..]
    } else {
        d
    };
    local.len() == 11 && local[0] == b'1' && (b'3'..=b'9').contains(&local[1])
}

/// Every identifier in `n`, in text order, not overlapping.
pub fn find(n: &Normalized) -> Vec<Found> {
    let text = n.text.as_str();
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for m in runs().find_iter(text) {
        // A run glued to letters or digits on its left is part of a word (a fund code
        // like HB-SD-08, a model number), not an identifier.
        if m.start() > 0 && bytes[m.start() - 1].is_ascii_alphanumeric() {
            continue;
        }
        let raw = m.as_str();
        let plus = raw.starts_with('+');
        let digits: Vec<u8> = raw
            .bytes()
            .filter(|b| b.is_ascii_digit() || *b == b'x')
            .collect();
        let kind = if digits.len() == 18 && id_check_ok(&digits) {
            Some(PiiKind::CnId)
        } else if digits.last() == Some(&b'x') {
            None
        } else if mobile_cn(&digits) {
            Some(PiiKind::Phone)
        } else if (16..=19).contains(&digits.len()) && luhn_ok(&digits) {
            Some(PiiKind::BankCard)
        } else if plus && (8..=15).contains(&digits.len()) {
            Some(PiiKind::Phone)
        } else {
            None
        };
        if let Some(kind) = kind {
            let end = if raw.ends_with(['x', ' ', '-']) && kind != PiiKind::CnId {
                m.end() - 1
            } else {
                m.end()
            };
            found.push(Found {
                kind,
                start: m.start(),
                end,
            });
        }
    }
    for m in emails().find_iter(text) {
        found.push(Found {
            kind: PiiKind::Email,
            start: m.start(),
            end: m.end(),
        });
    }
    for c in passports().captures_iter(text) {
        let Some(m) = c.get(1).or_else(|| c.get(2)) else {
            continue;
        };
        let before_ok = m.start() == 0 || !bytes[m.start() - 1].is_ascii_alphanumeric();
        let after_ok = m.end() == bytes.len() || !bytes[m.end()].is_ascii_alphanumeric();
        if before_ok && after_ok {
            found.push(Found {
                kind: PiiKind::Passport,
                start: m.start(),
                end: m.end(),
            });
        }
    }
    found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
    let mut kept: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if kept.last().is_none_or(|k| f.start >= k.end) {
            kept.push(f);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<PiiKind> {
        find(&Normalized::new(text))
            .into_iter()
            .map(|f| f.kind)
            .collect()
    }

    #[test]
    fn identifiers_are_found_and_look_alikes_are_not() {
        assert_eq!(kinds("身份证11010519491231002X"), [PiiKind::CnId]);
        assert!(
            kinds("订单号110105194912310021").is_empty(),
            "wrong check digit"
        );
        assert_eq!(
            kinds("card 4111 1111 1111 1111 please"),
            [PiiKind::BankCard]
        );
        assert!(kinds("ref 4111 1111 1111 1112").is_empty(), "fails Luhn");
        assert_eq!(kinds("电话１３８ ００１３-８０００"), [PiiKind::Phone]);
        assert_eq!(kinds("call +44 20 7946 0958"), [PiiKind::Phone]);
        assert_eq!(kinds("mail me: a.b+c@example.co.uk"), [PiiKind::Email]);
        assert_eq!(kinds("护照号码E12345678"), [PiiKind::Passport]);
        assert_eq!(kinds("passport no. K1234567"), [PiiKind::Passport]);
        assert!(kinds("基金代码000001，买入10000元，HB-SD-08，2024-05-01").is_empty());
    }
}
