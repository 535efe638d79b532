//! BM25 sparse vectors, computed in-process with Qdrant's own tokenizer pipeline so the
//! same vectors serve Qdrant Edge and a Qdrant server (the store applies IDF).
//!
//! Chinese text goes through the multilingual tokenizer with Chinese segmentation (a
//! plain word tokenizer would see a whole sentence as one token); English text through
//! the word tokenizer with English stop words and stemming.

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::{SparseVector, TokenizerType};

use crate::im::Language;

pub struct Bm25 {
    zh: EdgeBm25,
    en: EdgeBm25,
}

impl std::fmt::Debug for Bm25 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bm25")
    }
}

/// A sparse vector as plain parts, ready for either backend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sparse {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Sparse {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

impl From<SparseVector> for Sparse {
    fn from(v: SparseVector) -> Self {
        Sparse {
            indices: v.indices,
            values: v.values,
        }
    }
}

impl Bm25 {
    pub fn new() -> Bm25 {
        let build = |tokenizer, language: &str| {
            EdgeBm25::new(EdgeBm25Config {
                tokenizer,
                language: Some(language.into()),
                ..EdgeBm25Config::default()
            })
            .expect("the built-in BM25 configurations are valid")
        };
        Bm25 {
            zh: build(TokenizerType::Multilingual, "chinese"),
            en: build(TokenizerType::Word, "english"),
        }
    }

    fn model(&self, language: Language) -> &EdgeBm25 {
        match language {
            Language::ZhCn => &self.zh,
            Language::En => &self.en,
        }
    }

    pub fn document(&self, text: &str, language: Language) -> Sparse {
        self.model(language).embed_document(text).into()
    }

    /// Empty when the text has no searchable term (only stop words, emoji, punctuation).
    pub fn query(&self, text: &str, language: Language) -> Sparse {
        self.model(language).embed_query(text).into()
    }
}

impl Default for Bm25 {
    fn default() -> Self {
        Bm25::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_segmented_and_english_is_stemmed() {
        let bm25 = Bm25::new();
        let doc = bm25.document("债券基金的利率风险", Language::ZhCn);
        assert!(doc.indices.len() >= 3, "{doc:?}");
        let q = bm25.query("利率风险", Language::ZhCn);
        assert!(
            q.indices.iter().all(|i| doc.indices.contains(i)),
            "{q:?} {doc:?}"
        );
        let doc = bm25.document("Redemptions are settled in two days", Language::En);
        let q = bm25.query("redemption settlement", Language::En);
        assert!(q.indices.iter().any(|i| doc.indices.contains(i)));
    }

    #[test]
    fn stop_words_and_emoji_give_no_terms() {
        let bm25 = Bm25::new();
        assert!(bm25.query("the and of is it", Language::En).is_empty());
        assert!(bm25.query("😀🎉🙏", Language::En).is_empty());
        assert!(bm25.query("？！。", Language::ZhCn).is_empty());
    }
}
