//! The knowledge the bot speaks from: product sheets and FAQ/explainer documents, ingested
//! into a vector store and searched with hybrid (dense + BM25) retrieval.

pub mod api;
pub mod document;
pub mod embed;
pub mod eval;
pub mod index;
pub mod products;
pub mod sparse;
pub mod store;

pub use document::{Document, DocumentKind, load_documents};
pub use index::{Citation, KnowledgeBase, SearchMode, SearchRequest};
pub use products::{Catalog, Product};
