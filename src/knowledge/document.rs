//! The knowledge base as documents: product sheets (`products/*.md`) and FAQ/explainer
//! documents (`faq/*.md`), each with a version hash over its exact bytes, split into
//! heading-aware chunks bounded in tokens.
//!
//! A document's body holds `## ` sections; each section is written in one language (the
//! sheets give the Chinese sections first, then the English ones), and the language of a
//! chunk is read off its text. A section longer than the token bound is split at
//! paragraph, then sentence boundaries.

use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::products::{ProductType, Sheet, SheetError, front_matter, parse_sheet};
use crate::im::Language;
use crate::questionnaire::definition::Text;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    Product,
    Faq,
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Product => "product",
            DocumentKind::Faq => "faq",
        }
    }
}

/// The language of a piece of text: Chinese when it has at least as many CJK characters
/// as Latin words (a Chinese character carries about as much as a short English word),
/// English otherwise.
pub fn detect_language(text: &str) -> Language {
    let cjk = text.chars().filter(|c| is_cjk(*c)).count();
    let words = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
        .count();
    if cjk > 0 && cjk >= words {
        Language::ZhCn
    } else {
        Language::En
    }
}

pub fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF)
}

/// The front matter of an FAQ/explainer document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaqHeader {
    pub id: String,
    pub title: Text,
    #[serde(default)]
    pub topics: Vec<String>,
}

/// One document of the knowledge base, parsed and validated.
#[derive(Debug, Clone)]
pub struct Document {
    pub id: String,
    pub kind: DocumentKind,
    pub title: Text,
    /// The sheet's facts, for a product.
    pub product: Option<Sheet>,
    pub body: String,
    /// Path relative to the knowledge root, e.g. `products/hb-mmf-01.md`.
    pub path: String,
    /// SHA-256 (hex) of the file's bytes: the version an answer cites.
    pub version_hash: String,
    /// The file's full text, kept per version for compliance.
    pub source: String,
}

impl Document {
    pub fn product_type(&self) -> Option<ProductType> {
        self.product.as_ref().map(|s| s.kind)
    }

    pub fn risk_rank(&self) -> Option<u8> {
        self.product.as_ref().map(Sheet::risk_rank)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parses an FAQ document.
pub fn parse_faq(file: &str, text: &str) -> Result<(FaqHeader, String), SheetError> {
    let (header, body): (FaqHeader, String) = front_matter(file, text)?;
    let fail = |problem: String| SheetError {
        file: file.to_string(),
        problem,
    };
    let id_ok = header.id.starts_with("FAQ-")
        && header
            .id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err(fail(format!(
            "field id: {:?} must start with FAQ- and use uppercase letters, digits and '-'",
            header.id
        )));
    }
    if header.title.zh.trim().is_empty() || header.title.en.trim().is_empty() {
        return Err(fail("field title: needs zh-CN and en".into()));
    }
    if !body.lines().any(|l| l.starts_with("## ")) {
        return Err(fail("the body has no `## ` section".into()));
    }
    Ok((header, body))
}

/// Loads every document under `root` (`products/*.md` and `faq/*.md`), sorted by path.
/// The first broken file stops the load, naming the file and the field; ids must be
/// unique across the whole base.
pub fn load_documents(root: &Path) -> Result<Vec<Document>, SheetError> {
    if !root.is_dir() {
        return Err(SheetError {
            file: root.display().to_string(),
            problem: "is not a directory".into(),
        });
    }
    let mut docs: Vec<Document> = Vec::new();
    for (sub, kind) in [
        ("products", DocumentKind::Product),
        ("faq", DocumentKind::Faq),
    ] {
        let dir = root.join(sub);
        if !dir.exists() {
            continue;
        }
        for path in super::products::markdown_files(&dir)? {
            let file = path.display().to_string();
            let bytes = std::fs::read(&path).map_err(|e| SheetError {
                file: file.clone(),
                problem: format!("cannot read: {e}"),
            })?;
            let text = String::from_utf8(bytes).map_err(|_| SheetError {
                file: file.clone(),
                problem: "is not UTF-8".into(),
            })?;
            let relative = format!(
                "{sub}/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let doc = match kind {
                DocumentKind::Product => {
                    let p = parse_sheet(&file, &text)?;
                    Document {
                        id: p.sheet.id.clone(),
                        kind,
                        title: p.sheet.name.clone(),
                        product: Some(p.sheet),
                        body: p.body,
                        path: relative,
                        version_hash: sha256_hex(text.as_bytes()),
                        source: text,
                    }
                }
                DocumentKind::Faq => {
                    let (header, body) = parse_faq(&file, &text)?;
                    Document {
                        id: header.id,
                        kind,
                        title: header.title,
                        product: None,
                        body,
                        path: relative,
                        version_hash: sha256_hex(text.as_bytes()),
                        source: text,
                    }
                }
            };
            if let Some(other) = docs.iter().find(|d| d.id == doc.id) {
                return Err(SheetError {
                    file,
                    problem: format!("document id {} is also used by {}", doc.id, other.path),
                });
            }
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// One retrievable piece of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ordinal: u32,
    /// The section heading the chunk comes from.
    pub section: String,
    pub language: Language,
    /// The section text (what a citation shows).
    pub text: String,
    /// What is indexed: the document title and section heading, then the text.
    pub indexed: String,
    pub tokens: u32,
    pub content_hash: String,
}

/// The tokenizer chunk bounds are measured in (cl100k_base), built once per process.
pub fn bpe() -> &'static tiktoken_rs::CoreBPE {
    static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().expect("the cl100k_base tables are built in"))
}

pub fn count_tokens(text: &str) -> usize {
    bpe().encode_ordinary(text).len()
}

/// Splits a document into chunks of at most `max_tokens` tokens (the heading prefix
/// included), one section at a time.
pub fn chunk_document(doc: &Document, max_tokens: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (heading, text) in sections(&doc.body) {
        let language = detect_language(&format!("{heading} {text}"));
        let prefix = format!("{} · {heading}\n", doc.title.get(language));
        let budget = max_tokens.saturating_sub(count_tokens(&prefix)).max(16);
        for piece in split_bounded(&text, budget) {
            let indexed = format!("{prefix}{piece}");
            chunks.push(Chunk {
                ordinal: chunks.len() as u32,
                section: heading.clone(),
                language,
                tokens: count_tokens(&indexed) as u32,
                content_hash: sha256_hex(indexed.as_bytes()),
                text: piece,
                indexed,
            });
        }
    }
    chunks
}

/// The `## ` sections of a body as (heading, text); text before the first heading goes
/// under an empty heading.
fn sections(body: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut heading = String::new();
    let mut text = String::new();
    for line in body.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            if !text.trim().is_empty() {
                out.push((heading.clone(), text.trim().to_string()));
            }
            heading = h.trim().to_string();
            text.clear();
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    if !text.trim().is_empty() {
        out.push((heading, text.trim().to_string()));
    }
    out
}

/// Splits `text` into pieces of at most `budget` tokens: whole paragraphs where they
/// fit, else sentences, else hard cuts at character boundaries.
fn split_bounded(text: &str, budget: usize) -> Vec<String> {
    if count_tokens(text) <= budget {
        return vec![text.to_string()];
    }
    let mut units: Vec<String> = Vec::new();
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if count_tokens(para) <= budget {
            units.push(para.to_string());
            continue;
        }
        for sentence in sentences(para) {
            if count_tokens(&sentence) <= budget {
                units.push(sentence);
            } else {
                units.extend(hard_split(&sentence, budget));
            }
        }
    }
    // Pack consecutive units greedily.
    let mut pieces: Vec<String> = Vec::new();
    let mut current = String::new();
    for unit in units {
        let candidate = if current.is_empty() {
            unit.clone()
        } else {
            format!("{current}\n{unit}")
        };
        if count_tokens(&candidate) <= budget {
            current = candidate;
        } else {
            if !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            current = unit;
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Sentences, ending at 。！？ or at . ! ? followed by a space.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        let ends = matches!(c, '。' | '！' | '？' | '\n')
            || (matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| n.is_whitespace()));
        if ends {
            let s = current.trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

fn hard_split(text: &str, budget: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if count_tokens(&current) >= budget {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_is_read_off_the_text() {
        assert_eq!(detect_language("什么是债券基金？"), Language::ZhCn);
        assert_eq!(detect_language("What is a bond fund?"), Language::En);
        assert_eq!(detect_language("QDII基金有汇率风险吗"), Language::ZhCn);
        assert_eq!(
            detect_language("Is the Harbour QDII fund risky?"),
            Language::En
        );
        assert_eq!(detect_language("😀😀"), Language::En);
    }

    #[test]
    fn sections_become_bounded_chunks() {
        let long: String = (0..80)
            .map(|i| format!("This is sentence number {i} about redemption. "))
            .collect();
        let doc = Document {
            id: "FAQ-X".into(),
            kind: DocumentKind::Faq,
            title: Text {
                zh: "测试".into(),
                en: "Test".into(),
            },
            product: None,
            body: format!("## 什么是赎回\n\n赎回就是卖出基金份额。\n\n## Redemption\n\n{long}"),
            path: "faq/x.md".into(),
            version_hash: "h".into(),
            source: String::new(),
        };
        let chunks = chunk_document(&doc, 128);
        assert_eq!(chunks[0].language, Language::ZhCn);
        assert_eq!(chunks[0].section, "什么是赎回");
        assert!(chunks[0].indexed.starts_with("测试 · 什么是赎回\n"));
        assert!(chunks.len() > 3, "{}", chunks.len());
        for c in &chunks[1..] {
            assert_eq!(c.language, Language::En);
            assert!(c.tokens <= 128, "{}", c.tokens);
            assert!(c.indexed.starts_with("Test · Redemption\n"));
        }
        let rejoined: Vec<String> = chunks[1..].iter().map(|c| c.text.clone()).collect();
        assert_eq!(
            rejoined.join(" ").split_whitespace().count(),
            long.split_whitespace().count()
        );
        // Same input, same chunks, same hashes.
        assert_eq!(chunk_document(&doc, 128), chunks);
    }

    #[test]
    fn the_shipped_knowledge_base_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge");
        let docs = load_documents(&root).unwrap();
        assert!(
            docs.iter()
                .filter(|d| d.kind == DocumentKind::Product)
                .count()
                >= 10
        );
        for d in &docs {
            let chunks = chunk_document(d, 256);
            assert!(
                chunks.iter().any(|c| c.language == Language::ZhCn),
                "{}",
                d.id
            );
            assert!(
                chunks.iter().any(|c| c.language == Language::En),
                "{}",
                d.id
            );
        }
    }
}
