//! The knowledge base service: ingest (files → database → vector store) and search.
//!
//! The database is the record: each document's current version, every version's full
//! text, and the chunks of the current versions. The vector store is derived from the
//! chunks and reconciled against them by point id (a chunk's id is a UUID v5 over its
//! document, version and position), so a fresh node with an empty Edge shard, or a new
//! Qdrant collection, fills itself from the database without re-reading any file, and a
//! node whose shard is current does nothing at all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::document::{Chunk, Document, chunk_document, detect_language, load_documents};
use super::embed::{EmbedError, Embedder};
use super::products::SheetError;
use super::sparse::Bm25;
use super::store::{PayloadFilter, Point, StoreError, StoreHit, StoreQuery, VectorStore};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::im::Language;
use crate::time_fmt::{now_ms, rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    #[error(transparent)]
    File(#[from] SheetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("dense search needs an embedding model, and none is loaded")]
    NoEmbeddingModel,
    #[error("dense search does not serve {0} (knowledge.dense_languages); use hybrid or bm25")]
    NoDenseLanguage(&'static str),
}

impl From<sqlx::Error> for KnowledgeError {
    fn from(e: sqlx::Error) -> Self {
        KnowledgeError::Db(DbError::Query(e))
    }
}

/// How a search ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Dense and BM25 rankings fused by RRF (BM25 alone where no model covers the
    /// query's language).
    Hybrid,
    Bm25,
    Dense,
}

impl SearchMode {
    pub fn parse(s: &str) -> Option<SearchMode> {
        match s {
            "hybrid" => Some(SearchMode::Hybrid),
            "bm25" => Some(SearchMode::Bm25),
            "dense" => Some(SearchMode::Dense),
            _ => None,
        }
    }
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    /// The query's language; read off the text when absent. Only chunks in this
    /// language are searched.
    pub language: Option<Language>,
    pub mode: SearchMode,
    pub limit: usize,
    pub filter: PayloadFilter,
}

impl SearchRequest {
    pub fn new(query: impl Into<String>) -> SearchRequest {
        SearchRequest {
            query: query.into(),
            language: None,
            mode: SearchMode::Hybrid,
            limit: 5,
            filter: PayloadFilter::default(),
        }
    }
}

/// One hit, ready to cite.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Citation {
    pub chunk_id: String,
    pub doc_id: String,
    /// `product` or `faq`.
    pub kind: String,
    pub title: String,
    pub section: String,
    pub language: String,
    pub product_id: Option<String>,
    pub product_type: Option<String>,
    pub risk_level: Option<String>,
    pub sri: Option<u8>,
    /// SHA-256 of the document version the text comes from.
    pub version_hash: String,
    /// The sentence of the chunk that best matches the query.
    pub snippet: String,
    pub text: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub hits: Vec<Citation>,
    pub language: Language,
    /// The ranking actually used (hybrid falls back to BM25 where no model applies).
    pub mode: SearchMode,
    pub embed_ms: f64,
    pub search_ms: f64,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IngestReport {
    pub documents: usize,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    pub chunks: usize,
    pub points_upserted: usize,
    pub points_deleted: usize,
    pub elapsed_ms: f64,
}

/// One stored version of a document, for citations and compliance.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentVersion {
    pub doc_id: String,
    pub version_hash: String,
    pub path: String,
    /// The file's full text at that version.
    pub source: String,
    /// RFC 3339.
    pub first_ingested: String,
    /// RFC 3339, when a newer version or a deletion replaced it.
    pub retired_at: Option<String>,
    pub current: bool,
}

struct Inner {
    db: Db,
    store: VectorStore,
    embedder: Option<Embedder>,
    bm25: Bm25,
    dense_languages: Vec<Language>,
    max_tokens: usize,
    /// One ingest or reconcile at a time in this process.
    writer: tokio::sync::Mutex<()>,
    /// What reconciling the store did when it was opened.
    startup: std::sync::OnceLock<(usize, usize)>,
}

/// The knowledge base: cheap to clone.
#[derive(Clone)]
pub struct KnowledgeBase {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("store", &self.inner.store)
            .field("embedder", &self.inner.embedder)
            .finish()
    }
}

/// Where the embedding model is looked for when none is configured.
pub fn default_model_dir(config: &Config) -> PathBuf {
    config.data_dir.join("models").join("all-MiniLM-L6-v2")
}

impl KnowledgeBase {
    /// Loads the embedding model (if there is one), opens the vector store named by the
    /// configuration, and reconciles it with the database.
    pub async fn open(config: &Config, db: Db) -> Result<KnowledgeBase, KnowledgeError> {
        let k = &config.knowledge;
        let model_dir = k
            .embedding_model_dir
            .clone()
            .unwrap_or_else(|| default_model_dir(config));
        let embedder = if Embedder::present(&model_dir) {
            let dir = model_dir.clone();
            let e = tokio::task::spawn_blocking(move || Embedder::load(&dir))
                .await
                .expect("loading the model does not panic")?;
            tracing::info!(model = %e.id, "embedding model loaded: hybrid retrieval (dense + BM25)");
            Some(e)
        } else if k.embedding_model_dir.is_some() {
            return Err(EmbedError::Load {
                dir: model_dir,
                problem: "no model.safetensors, tokenizer.json and config.json here".into(),
            }
            .into());
        } else {
            tracing::warn!(
                dir = %model_dir.display(),
                "no embedding model: retrieval runs on BM25 alone (install one with scripts/fetch-embedding-model)"
            );
            None
        };
        // Vectors from different models, or from one model serving different languages,
        // never share a store: changing either fills a new store from the database.
        let fingerprint = match &embedder {
            Some(e) => {
                let languages: Vec<&str> = k.dense_languages.iter().map(|l| l.as_str()).collect();
                format!("{}|{}", e.id, languages.join(","))
            }
            None => "bm25-only".to_string(),
        };
        let namespace = format!(
            "knowledge-{}",
            &super::document::sha256_hex(fingerprint.as_bytes())[..8]
        );
        let dims = embedder.as_ref().map(|e| e.dims);
        let store = match &config.qdrant_url {
            Some(url) => {
                let collection = format!("{}{namespace}", k.collection_prefix);
                VectorStore::connect_server(
                    url,
                    config.qdrant_api_key.as_ref().map(|s| s.expose()),
                    &collection,
                    dims,
                )
                .await?
            }
            None => {
                VectorStore::open_edge(&config.data_dir.join("vectors").join(&namespace), dims)
                    .await?
            }
        };
        tracing::info!(store = %store.describe(), "vector store open");
        let kb = KnowledgeBase {
            inner: Arc::new(Inner {
                db,
                store,
                embedder,
                bm25: Bm25::new(),
                dense_languages: k.dense_languages.clone(),
                max_tokens: k.chunk_max_tokens,
                writer: tokio::sync::Mutex::new(()),
                startup: std::sync::OnceLock::new(),
            }),
        };
        let synced = kb.reconcile().await?;
        let _ = kb.inner.startup.set(synced);
        Ok(kb)
    }

    /// (points upserted, points deleted) when the store was reconciled on opening: (0, 0)
    /// when it already held exactly the database's chunks.
    pub fn startup_sync(&self) -> (usize, usize) {
        self.inner.startup.get().copied().unwrap_or_default()
    }

    pub fn store(&self) -> &VectorStore {
        &self.inner.store
    }

    /// Whether queries and chunks in `language` get dense vectors (a model is loaded and
    /// `knowledge.dense_languages` names the language).
    pub fn serves_dense(&self, language: Language) -> bool {
        self.inner.embedder.is_some() && self.inner.dense_languages.contains(&language)
    }

    /// The BM25 term ids of `text` — the analyser the index uses (segmentation,
    /// stemming, stop words), so sentences can be matched against a query the same way.
    pub fn terms(&self, text: &str, language: Language) -> std::collections::HashSet<u32> {
        self.inner
            .bm25
            .query(text, language)
            .indices
            .into_iter()
            .collect()
    }

    pub fn has_embedder(&self) -> bool {
        self.inner.embedder.is_some()
    }

    /// Reads every document under `root`, validates all of them first (one broken file
    /// changes nothing), then brings the database and the vector store in line: new
    /// and changed documents get fresh chunks, deleted ones lose theirs, unchanged ones
    /// are not touched.
    pub async fn ingest(&self, root: &Path) -> Result<IngestReport, KnowledgeError> {
        let started = Instant::now();
        let root = root.to_path_buf();
        let max_tokens = self.inner.max_tokens;
        let docs = tokio::task::spawn_blocking(move || -> Result<_, SheetError> {
            let docs = load_documents(&root)?;
            Ok(docs
                .into_iter()
                .map(|d| {
                    let chunks = chunk_document(&d, max_tokens);
                    (d, chunks)
                })
                .collect::<Vec<_>>())
        })
        .await
        .expect("reading the knowledge base does not panic")?;

        let _writer = self.inner.writer.lock().await;
        let db = &self.inner.db;
        let current: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "SELECT doc_id, version_hash FROM knowledge_documents",
        )
        .fetch_all(db.pool())
        .await?
        .into_iter()
        .collect();
        let mut report = IngestReport {
            documents: docs.len(),
            ..IngestReport::default()
        };
        let now = now_ms();
        let seen: HashSet<&str> = docs.iter().map(|(d, _)| d.id.as_str()).collect();
        for (doc, chunks) in &docs {
            report.chunks += chunks.len();
            match current.get(&doc.id) {
                Some(hash) if *hash == doc.version_hash => {
                    report.unchanged += 1;
                    continue;
                }
                Some(_) => report.updated.push(doc.id.clone()),
                None => report.added.push(doc.id.clone()),
            }
            self.write_document(doc, chunks, now).await?;
        }
        for id in current.keys().filter(|id| !seen.contains(id.as_str())) {
            let mut tx = db.begin_write().await?;
            sqlx::query("DELETE FROM knowledge_chunks WHERE doc_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM knowledge_documents WHERE doc_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE knowledge_document_versions SET retired_at = $1 \
                 WHERE doc_id = $2 AND retired_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            report.removed.push(id.clone());
        }
        report.removed.sort();
        let (upserted, deleted) = self.reconcile_locked().await?;
        report.points_upserted = upserted;
        report.points_deleted = deleted;
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(report)
    }

    async fn write_document(
        &self,
        doc: &Document,
        chunks: &[Chunk],
        now: i64,
    ) -> Result<(), KnowledgeError> {
        let mut tx = self.inner.db.begin_write().await?;
        sqlx::query("DELETE FROM knowledge_chunks WHERE doc_id = $1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM knowledge_documents WHERE doc_id = $1")
            .bind(&doc.id)
            .execute(&mut *tx)
            .await?;
        let sheet = doc.product.as_ref();
        sqlx::query(
            "INSERT INTO knowledge_documents (doc_id, kind, path, version_hash, title_zh, title_en, \
             product_type, risk_level, sri, chunk_count, ingested_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&doc.id)
        .bind(doc.kind.as_str())
        .bind(&doc.path)
        .bind(&doc.version_hash)
        .bind(&doc.title.zh)
        .bind(&doc.title.en)
        .bind(sheet.map(|s| s.kind.as_str()))
        .bind(sheet.map(|s| s.risk_level.clone()))
        .bind(sheet.map(|s| i64::from(s.sri)))
        .bind(chunks.len() as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE knowledge_document_versions SET retired_at = $1 \
             WHERE doc_id = $2 AND version_hash <> $3 AND retired_at IS NULL",
        )
        .bind(now)
        .bind(&doc.id)
        .bind(&doc.version_hash)
        .execute(&mut *tx)
        .await?;
        let known: Option<(String,)> = sqlx::query_as(
            "SELECT version_hash FROM knowledge_document_versions WHERE doc_id = $1 AND version_hash = $2",
        )
        .bind(&doc.id)
        .bind(&doc.version_hash)
        .fetch_optional(&mut *tx)
        .await?;
        if known.is_some() {
            // A file put back to an earlier version: that version is current again.
            sqlx::query(
                "UPDATE knowledge_document_versions SET retired_at = NULL \
                 WHERE doc_id = $1 AND version_hash = $2",
            )
            .bind(&doc.id)
            .bind(&doc.version_hash)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO knowledge_document_versions (doc_id, version_hash, path, source, first_ingested) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&doc.id)
            .bind(&doc.version_hash)
            .bind(&doc.path)
            .bind(&doc.source)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for c in chunks {
            sqlx::query(
                "INSERT INTO knowledge_chunks (chunk_id, doc_id, version_hash, ordinal, section, \
                 language, content_hash, text, indexed, tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(chunk_id(&doc.id, &doc.version_hash, c.ordinal).to_string())
            .bind(&doc.id)
            .bind(&doc.version_hash)
            .bind(i64::from(c.ordinal))
            .bind(&c.section)
            .bind(c.language.as_str())
            .bind(&c.content_hash)
            .bind(&c.text)
            .bind(&c.indexed)
            .bind(i64::from(c.tokens))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Brings the vector store in line with the database's chunks. Returns (points
    /// upserted, points deleted).
    pub async fn reconcile(&self) -> Result<(usize, usize), KnowledgeError> {
        let _writer = self.inner.writer.lock().await;
        self.reconcile_locked().await
    }

    async fn reconcile_locked(&self) -> Result<(usize, usize), KnowledgeError> {
        let rows: Vec<ChunkRow> = sqlx::query_as(
            "SELECT c.chunk_id, c.doc_id, c.version_hash, c.ordinal, c.section, c.language, \
             c.content_hash, c.text, c.indexed, d.kind, d.title_zh, d.title_en, d.product_type, \
             d.risk_level, d.sri FROM knowledge_chunks c JOIN knowledge_documents d ON d.doc_id = c.doc_id",
        )
        .fetch_all(self.inner.db.pool())
        .await?;
        let have = self.inner.store.ids().await?;
        let want: HashSet<Uuid> = rows
            .iter()
            .filter_map(|r| r.0.parse::<Uuid>().ok())
            .collect();
        let extra: Vec<Uuid> = have.difference(&want).copied().collect();
        let missing: Vec<&ChunkRow> = rows
            .iter()
            .filter(|r| r.0.parse::<Uuid>().is_ok_and(|id| !have.contains(&id)))
            .collect();
        let deleted = extra.len();
        self.inner.store.delete(extra).await?;
        let mut missing = missing;
        if !missing.is_empty() {
            tracing::info!(
                points = missing.len(),
                dense = self.inner.embedder.is_some(),
                "filling the vector store (vectors not yet in the embedding cache are computed now: on the first start this takes a while on a small CPU)"
            );
        }
        // Similar lengths share a batch: the model pads every input to the batch's longest.
        missing.sort_by_key(|r| r.8.len());
        let mut upserted = 0;
        for batch in missing.chunks(32) {
            let points = self.points(batch).await?;
            upserted += points.len();
            self.inner.store.upsert(points).await?;
        }
        if upserted + deleted > 0 {
            self.inner.store.commit().await?;
            // Cached vectors no current chunk uses (older versions' text) go.
            sqlx::query(
                "DELETE FROM knowledge_embeddings WHERE text_hash NOT IN \
                 (SELECT content_hash FROM knowledge_chunks)",
            )
            .execute(self.inner.db.pool())
            .await?;
            tracing::info!(
                upserted,
                deleted,
                "vector store reconciled with the knowledge base"
            );
        }
        Ok((upserted, deleted))
    }

    async fn points(&self, rows: &[&ChunkRow]) -> Result<Vec<Point>, KnowledgeError> {
        // Dense vectors only for the languages the model serves; the rest are BM25-only.
        let dense_rows: Vec<usize> = (0..rows.len())
            .filter(|&i| {
                self.inner.embedder.is_some()
                    && rows[i]
                        .5
                        .parse::<Language>()
                        .is_ok_and(|l| self.inner.dense_languages.contains(&l))
            })
            .collect();
        let vectors = self
            .cached_embeddings(
                dense_rows
                    .iter()
                    .map(|&i| (rows[i].6.clone(), rows[i].8.clone()))
                    .collect(),
            )
            .await?;
        let mut dense: Vec<Option<Vec<f32>>> = vec![None; rows.len()];
        for (i, v) in dense_rows.into_iter().zip(vectors) {
            dense[i] = Some(v);
        }
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let language: Language = r.5.parse().unwrap_or(Language::En);
                let (
                    chunk_id,
                    doc_id,
                    version_hash,
                    ordinal,
                    section,
                    _,
                    content_hash,
                    text,
                    indexed,
                ) = (&r.0, &r.1, &r.2, r.3, &r.4, &r.5, &r.6, &r.7, &r.8);
                let title = if language == Language::ZhCn {
                    &r.10
                } else {
                    &r.11
                };
                let risk_rank = r.13.as_deref().and_then(|l| l.get(1..)?.parse::<u8>().ok());
                let mut payload = Map::new();
                for (k, v) in [
                    ("chunk_id", json!(chunk_id)),
                    ("doc_id", json!(doc_id)),
                    ("kind", json!(r.9)),
                    ("title", json!(title)),
                    ("section", json!(section)),
                    ("language", json!(language.as_str())),
                    ("version_hash", json!(version_hash)),
                    ("content_hash", json!(content_hash)),
                    ("ordinal", json!(ordinal)),
                    ("text", json!(text)),
                ] {
                    payload.insert(k.into(), v);
                }
                if r.9 == "product" {
                    payload.insert("product_id".into(), json!(doc_id));
                    payload.insert("product_type".into(), json!(r.12));
                    payload.insert("risk_level".into(), json!(r.13));
                    payload.insert("risk_rank".into(), json!(risk_rank));
                    payload.insert("sri".into(), json!(r.14));
                }
                Point {
                    id: chunk_id.parse().expect("filtered to valid ids"),
                    dense: dense[i].take(),
                    sparse: self.inner.bm25.document(indexed, language),
                    payload,
                }
            })
            .collect())
    }

    /// The vectors of `(content hash, text)` pairs: from the embedding cache where this
    /// model embedded the same text before (a restart, a new node, a re-ingest after an
    /// edit elsewhere in the document), computed and cached otherwise.
    async fn cached_embeddings(
        &self,
        items: Vec<(String, String)>,
    ) -> Result<Vec<Vec<f32>>, KnowledgeError> {
        let Some(embedder) = self.inner.embedder.as_ref() else {
            return Ok(Vec::new());
        };
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let model = embedder.id.clone();
        let dims = embedder.dims;
        let placeholders: Vec<String> = (0..items.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT text_hash, vector FROM knowledge_embeddings WHERE model_id = $1 AND text_hash IN ({})",
            placeholders.join(", ")
        );
        // Only numbered placeholders are formatted in; every value is bound.
        let mut query =
            sqlx::query_as::<_, (String, Vec<u8>)>(sqlx::AssertSqlSafe(sql)).bind(&model);
        for (hash, _) in &items {
            query = query.bind(hash);
        }
        let mut cached: HashMap<String, Vec<f32>> = query
            .fetch_all(self.inner.db.pool())
            .await?
            .into_iter()
            .filter(|(_, bytes)| bytes.len() == dims * 4)
            .map(|(hash, bytes)| (hash, decode_vector(&bytes)))
            .collect();
        let todo: Vec<&(String, String)> = items
            .iter()
            .filter(|(hash, _)| !cached.contains_key(hash))
            .collect();
        if !todo.is_empty() {
            let texts = todo.iter().map(|(_, text)| text.clone()).collect();
            let computed = self.embed(texts).await?.unwrap_or_default();
            for ((hash, _), vector) in todo.into_iter().zip(computed) {
                let bytes = encode_vector(&vector);
                sqlx::query(
                    "INSERT INTO knowledge_embeddings (model_id, text_hash, vector) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(&model)
                .bind(hash)
                .bind(bytes)
                .execute(self.inner.db.pool())
                .await?;
                cached.insert(hash.clone(), vector);
            }
        }
        Ok(items
            .iter()
            .map(|(hash, _)| cached.get(hash).cloned().unwrap_or_default())
            .collect())
    }

    /// Embeds `texts` with the loaded model (empty without one).
    pub async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, KnowledgeError> {
        Ok(self.embed(texts).await?.unwrap_or_default())
    }

    /// Embeds on the blocking pool; `None` without a model.
    async fn embed(&self, texts: Vec<String>) -> Result<Option<Vec<Vec<f32>>>, KnowledgeError> {
        if self.inner.embedder.is_none() {
            return Ok(None);
        }
        let kb = self.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            kb.inner
                .embedder
                .as_ref()
                .expect("checked above")
                .embed(&refs)
        })
        .await
        .expect("embedding does not panic")?;
        Ok(Some(vectors))
    }

    /// Searches. A query with no searchable term (only stop words, emoji or punctuation)
    /// has an empty result in every mode.
    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResult, KnowledgeError> {
        let language = request
            .language
            .unwrap_or_else(|| detect_language(&request.query));
        let sparse = self.inner.bm25.query(&request.query, language);
        let dense_applies =
            self.inner.embedder.is_some() && self.inner.dense_languages.contains(&language);
        let mode = match request.mode {
            SearchMode::Dense if self.inner.embedder.is_none() => {
                return Err(KnowledgeError::NoEmbeddingModel);
            }
            SearchMode::Dense if !dense_applies => {
                return Err(KnowledgeError::NoDenseLanguage(language.as_str()));
            }
            SearchMode::Hybrid if !dense_applies => SearchMode::Bm25,
            m => m,
        };
        let mut result = SearchResult {
            hits: Vec::new(),
            language,
            mode,
            embed_ms: 0.0,
            search_ms: 0.0,
        };
        if sparse.is_empty() || request.limit == 0 {
            return Ok(result);
        }
        let started = Instant::now();
        let dense = if mode == SearchMode::Bm25 {
            None
        } else {
            self.embed(vec![request.query.clone()])
                .await?
                .and_then(|mut v| v.pop())
        };
        result.embed_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut filter = request.filter.clone();
        filter.language = Some(language.as_str());
        let query = StoreQuery {
            dense,
            sparse: (mode != SearchMode::Dense).then(|| sparse.clone()),
            filter,
            limit: request.limit,
            prefetch: (request.limit * 4).max(20),
        };
        let started = Instant::now();
        let hits = self.inner.store.query(query).await?;
        result.search_ms = started.elapsed().as_secs_f64() * 1e3;
        result.hits = hits
            .into_iter()
            .map(|h| self.citation(h, &sparse, language))
            .collect();
        Ok(result)
    }

    /// A stored hit as a citation, with the best-matching sentence as its snippet.
    fn citation(
        &self,
        hit: StoreHit,
        query: &super::sparse::Sparse,
        language: Language,
    ) -> Citation {
        let p = &hit.payload;
        let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
        let text = s("text").unwrap_or_default();
        let snippet = super::document::sentences(&text)
            .into_iter()
            .max_by_key(|sentence| {
                let terms = self.inner.bm25.query(sentence, language);
                terms
                    .indices
                    .iter()
                    .filter(|i| query.indices.contains(i))
                    .count()
            })
            .map(|s| truncate_chars(&s, 240))
            .unwrap_or_default();
        Citation {
            chunk_id: hit.id.to_string(),
            doc_id: s("doc_id").unwrap_or_default(),
            kind: s("kind").unwrap_or_default(),
            title: s("title").unwrap_or_default(),
            section: s("section").unwrap_or_default(),
            language: s("language").unwrap_or_default(),
            product_id: s("product_id"),
            product_type: s("product_type"),
            risk_level: s("risk_level"),
            sri: p.get("sri").and_then(Value::as_u64).map(|v| v as u8),
            version_hash: s("version_hash").unwrap_or_default(),
            snippet,
            text,
            score: hit.score,
        }
    }

    /// A document at a version (the current one when `version` is `None`).
    pub async fn document(
        &self,
        doc_id: &str,
        version: Option<&str>,
    ) -> Result<Option<DocumentVersion>, KnowledgeError> {
        let row: Option<(String, String, String, String, i64, Option<i64>)> = match version {
            Some(v) => {
                sqlx::query_as(
                    "SELECT doc_id, version_hash, path, source, first_ingested, retired_at \
                     FROM knowledge_document_versions WHERE doc_id = $1 AND version_hash = $2",
                )
                .bind(doc_id)
                .bind(v)
                .fetch_optional(self.inner.db.pool())
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT doc_id, version_hash, path, source, first_ingested, retired_at \
                     FROM knowledge_document_versions WHERE doc_id = $1 AND retired_at IS NULL",
                )
                .bind(doc_id)
                .fetch_optional(self.inner.db.pool())
                .await?
            }
        };
        Ok(row.map(
            |(doc_id, version_hash, path, source, first, retired)| DocumentVersion {
                doc_id,
                version_hash,
                path,
                source,
                first_ingested: rfc3339(first),
                retired_at: retired.map(rfc3339),
                current: retired.is_none(),
            },
        ))
    }

    /// How many documents and chunks the database holds.
    pub async fn counts(&self) -> Result<(i64, i64), KnowledgeError> {
        let (docs,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM knowledge_documents")
            .fetch_one(self.inner.db.pool())
            .await?;
        let (chunks,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM knowledge_chunks")
            .fetch_one(self.inner.db.pool())
            .await?;
        Ok((docs, chunks))
    }
}

/// A cached vector as stored: its floats, little-endian.
fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode_vector(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

type ChunkRow = (
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// A chunk's point id: stable for the same document version and position.
pub fn chunk_id(doc_id: &str, version_hash: &str, ordinal: u32) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("wealthdesk:{doc_id}:{version_hash}:{ordinal}").as_bytes(),
    )
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
