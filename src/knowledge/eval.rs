//! `wealthdesk eval retrieval`: retrieval quality on `knowledge/eval/retrieval.jsonl` for
//! BM25 alone, dense alone and hybrid, and query latency on a synthetic corpus.
//!
//! Each line of the eval set: `{"id", "query", "lang", "relevant": [doc ids],
//! "purpose": "fact"|"recommend", "client_max_product": "R2" (optional), "tags": [...]}`.
//! A recommendation query is filtered to the client's level exactly as the API does.
//! Metrics are over documents (a document's chunks count once, at its best rank):
//! recall@5, nDCG@5 (binary relevance) and MRR over the top 10.
//!
//! The latency corpus is built from the real chunks: each synthetic chunk recombines the
//! sentences of real chunks of its language (so the BM25 vocabulary and lengths are real)
//! and carries a real chunk's dense vector with Gaussian noise (so the vectors cluster
//! like real ones). Every eval query then runs against it, hybrid with the risk filter.

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::document::detect_language;
use super::index::{KnowledgeBase, SearchMode, SearchRequest};
use super::sparse::Bm25;
use super::store::{PayloadFilter, Point, StoreQuery, VectorStore};
use crate::config::Config;
use crate::db::Db;
use crate::im::Language;

#[derive(Debug, Clone, clap::Args)]
pub struct RetrievalArgs {
    /// The eval set (JSON lines).
    #[arg(long, default_value = "knowledge/eval/retrieval.jsonl")]
    pub set: PathBuf,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Chunks in the synthetic latency corpus (0 skips the latency run).
    #[arg(long, default_value_t = 10_000)]
    pub latency_chunks: usize,
    /// Timed queries in the latency run.
    #[arg(long, default_value_t = 2_000)]
    pub latency_queries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalQuery {
    pub id: String,
    pub query: String,
    pub lang: String,
    pub relevant: Vec<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub client_max_product: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub queries: usize,
    pub recall_at_5: f64,
    pub ndcg_at_5: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub all: Scores,
    pub zh: Scores,
    pub en: Scores,
    /// End-to-end `search` latency over the eval queries (embedding included), ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Queries whose relevant documents were all missed in the top 5.
    pub misses: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub chunks: usize,
    pub queries: usize,
    /// Vector-store query: hybrid (dense + BM25, RRF) with language and risk filters.
    pub hybrid_p50_ms: f64,
    pub hybrid_p99_ms: f64,
    pub bm25_p50_ms: f64,
    pub bm25_p99_ms: f64,
    /// Query embedding alone (one sentence, CPU).
    pub embed_p50_ms: f64,
    pub embed_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    pub eval_set: String,
    pub questions: usize,
    pub embedding_model: bool,
    pub ingest_documents: usize,
    pub ingest_chunks: usize,
    pub ingest_ms: f64,
    pub modes: Vec<ModeReport>,
    pub latency: Option<LatencyReport>,
}

pub fn load_eval_set(path: &std::path::Path) -> anyhow::Result<Vec<EvalQuery>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the eval set {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// The document ranking of a chunk ranking.
fn doc_ranking(doc_ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in doc_ids {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// (recall@5, nDCG@5, reciprocal rank) of one ranking.
pub fn score(ranking: &[String], relevant: &[String]) -> (f64, f64, f64) {
    if relevant.is_empty() {
        return (1.0, 1.0, 1.0);
    }
    let top5 = &ranking[..ranking.len().min(5)];
    let found = relevant.iter().filter(|r| top5.contains(r)).count();
    let recall = found as f64 / relevant.len() as f64;
    let dcg: f64 = top5
        .iter()
        .enumerate()
        .filter(|(_, d)| relevant.contains(d))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(5))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let rr = ranking
        .iter()
        .take(10)
        .position(|d| relevant.contains(d))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64);
    (recall, dcg / ideal, rr)
}

fn mean(v: &[(f64, f64, f64)]) -> Scores {
    let n = v.len().max(1) as f64;
    Scores {
        queries: v.len(),
        recall_at_5: v.iter().map(|s| s.0).sum::<f64>() / n,
        ndcg_at_5: v.iter().map(|s| s.1).sum::<f64>() / n,
        mrr: v.iter().map(|s| s.2).sum::<f64>() / n,
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The filter a query runs with: a recommendation is capped at the client's level.
fn filter_for(q: &EvalQuery) -> PayloadFilter {
    let mut filter = PayloadFilter::default();
    if q.purpose.as_deref() == Some("recommend")
        && let Some(max) = &q.client_max_product
    {
        if let Some(n) = max.strip_prefix("SRI") {
            filter.max_sri = n.parse().ok();
        } else if let Some(n) = max.strip_prefix('R') {
            filter.max_risk_rank = n.parse().ok();
        }
    }
    filter
}

pub async fn run_retrieval(config: &Config, args: &RetrievalArgs) -> anyhow::Result<()> {
    let set = load_eval_set(&args.set)?;
    // A scratch data directory and database: the eval never touches the deployment's.
    let scratch = tempfile::tempdir()?;
    let mut cfg = config.clone();
    if cfg.knowledge.embedding_model_dir.is_none() {
        cfg.knowledge.embedding_model_dir = Some(super::index::default_model_dir(config))
            .filter(|d| super::embed::Embedder::present(d));
    }
    cfg.data_dir = scratch.path().to_path_buf();
    cfg.database_url = None;
    cfg.qdrant_url = None;
    let db = Db::connect(&cfg).await?;
    db.migrate().await?;
    let kb = KnowledgeBase::open(&cfg, db.clone()).await?;
    let report = kb.ingest(&cfg.knowledge.dir).await?;

    let mut modes = Vec::new();
    let mut wanted = vec![SearchMode::Bm25];
    if kb.has_embedder() {
        wanted.extend([SearchMode::Dense, SearchMode::Hybrid]);
    } else {
        eprintln!("no embedding model: only BM25 is measured (run scripts/fetch-embedding-model)");
    }
    for mode in wanted {
        let mut per: Vec<(Language, (f64, f64, f64))> = Vec::new();
        let mut latencies = Vec::new();
        let mut misses = Vec::new();
        for q in &set {
            let language = q.lang.parse::<Language>().map_err(anyhow::Error::msg)?;
            if mode == SearchMode::Dense && !kb.serves_dense(language) {
                // The model does not embed this language: dense alone has nothing to say.
                continue;
            }
            let request = SearchRequest {
                query: q.query.clone(),
                language: Some(language),
                mode,
                limit: 12,
                filter: filter_for(q),
            };
            let started = Instant::now();
            let result = kb.search(&request).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
            let ranking = doc_ranking(result.hits.into_iter().map(|h| h.doc_id));
            let s = score(&ranking, &q.relevant);
            if s.0 == 0.0 {
                misses.push(q.id.clone());
            }
            per.push((language, s));
        }
        let of = |l: Option<Language>| {
            mean(
                &per.iter()
                    .filter(|(x, _)| l.is_none_or(|l| *x == l))
                    .map(|(_, s)| *s)
                    .collect::<Vec<_>>(),
            )
        };
        let lat = sorted(latencies);
        modes.push(ModeReport {
            mode: format!("{mode:?}").to_lowercase(),
            all: of(None),
            zh: of(Some(Language::ZhCn)),
            en: of(Some(Language::En)),
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            misses,
        });
    }

    let latency = if args.latency_chunks > 0 {
        Some(latency_run(&kb, &db, &set, args, scratch.path()).await?)
    } else {
        None
    };
    let out = RetrievalReport {
        eval_set: args.set.display().to_string(),
        questions: set.len(),
        embedding_model: kb.has_embedder(),
        ingest_documents: report.documents,
        ingest_chunks: report.chunks,
        ingest_ms: report.elapsed_ms,
        modes,
        latency,
    };
    db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&out);
    }
    Ok(())
}

fn print_report(r: &RetrievalReport) {
    println!(
        "eval set {} ({} questions); ingest of {} documents / {} chunks: {:.0} ms",
        r.eval_set, r.questions, r.ingest_documents, r.ingest_chunks, r.ingest_ms
    );
    println!(
        "{:<8} {:>10} {:>9} {:>7}   {:>9} {:>9}   {:>9} {:>9}   {:>8} {:>8}",
        "mode",
        "recall@5",
        "nDCG@5",
        "MRR",
        "zh rec@5",
        "en rec@5",
        "zh MRR",
        "en MRR",
        "p50 ms",
        "p99 ms"
    );
    // A language the mode did not run on shows "-".
    let cell = |s: &Scores, v: f64| {
        if s.queries == 0 {
            "-".to_string()
        } else {
            format!("{v:.3}")
        }
    };
    for m in &r.modes {
        println!(
            "{:<8} {:>10.3} {:>9.3} {:>7.3}   {:>9} {:>9}   {:>9} {:>9}   {:>8.2} {:>8.2}",
            m.mode,
            m.all.recall_at_5,
            m.all.ndcg_at_5,
            m.all.mrr,
            cell(&m.zh, m.zh.recall_at_5),
            cell(&m.en, m.en.recall_at_5),
            cell(&m.zh, m.zh.mrr),
            cell(&m.en, m.en.mrr),
            m.p50_ms,
            m.p99_ms
        );
    }
    for m in &r.modes {
        if !m.misses.is_empty() {
            println!("{} missed (recall@5 = 0): {}", m.mode, m.misses.join(", "));
        }
    }
    if let Some(l) = &r.latency {
        println!(
            "latency on {} synthetic chunks, {} queries: hybrid+filter p50 {:.3} ms p99 {:.3} ms; \
             bm25+filter p50 {:.3} ms p99 {:.3} ms; query embedding p50 {:.2} ms p99 {:.2} ms",
            l.chunks,
            l.queries,
            l.hybrid_p50_ms,
            l.hybrid_p99_ms,
            l.bm25_p50_ms,
            l.bm25_p99_ms,
            l.embed_p50_ms,
            l.embed_p99_ms
        );
    }
}

/// Builds the synthetic corpus in its own Edge shard and times queries against it.
async fn latency_run(
    kb: &KnowledgeBase,
    db: &Db,
    set: &[EvalQuery],
    args: &RetrievalArgs,
    scratch: &std::path::Path,
) -> anyhow::Result<LatencyReport> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT language, indexed, doc_id FROM knowledge_chunks")
            .fetch_all(db.pool())
            .await?;
    anyhow::ensure!(!rows.is_empty(), "the knowledge base is empty");
    // Real vectors to perturb: the embeddings the ingest computed for the real chunks.
    let base: Vec<Vec<f32>> =
        sqlx::query_as::<_, (Vec<u8>,)>("SELECT vector FROM knowledge_embeddings")
            .fetch_all(db.pool())
            .await?
            .into_iter()
            .map(|(bytes,)| super::index::decode_vector(&bytes))
            .collect();
    let dims = base.first().map(Vec::len);
    let store = VectorStore::open_edge(&scratch.join("latency"), dims).await?;
    let bm25 = Bm25::new();
    let mut rng = StdRng::seed_from_u64(7);
    let sentences: Vec<(Language, Vec<String>)> = [Language::ZhCn, Language::En]
        .into_iter()
        .map(|l| {
            let s = rows
                .iter()
                .filter(|r| r.0 == l.as_str())
                .flat_map(|r| super::document::sentences(&r.1))
                .collect();
            (l, s)
        })
        .collect();
    let mut batch = Vec::new();
    for i in 0..args.latency_chunks {
        let (language, pool) = &sentences[i % 2];
        let text: Vec<String> = (0..rng.random_range(3..8))
            .filter_map(|_| pool.choose(&mut rng).cloned())
            .collect();
        let text = text.join(" ");
        let dense = base.choose(&mut rng).map(|v| {
            let mut v: Vec<f32> = v
                .iter()
                .map(|x| x + rng.random_range(-0.05..0.05))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        });
        let rank = rng.random_range(1..=5u8);
        let mut payload = Map::new();
        payload.insert("language".into(), json!(language.as_str()));
        payload.insert("kind".into(), json!("product"));
        payload.insert("doc_id".into(), json!(format!("SYN-{i}")));
        payload.insert("risk_rank".into(), json!(rank));
        payload.insert("text".into(), Value::String(text.clone()));
        batch.push(Point {
            id: uuid::Uuid::new_v4(),
            dense,
            sparse: bm25.document(&text, *language),
            payload,
        });
        if batch.len() == 512 {
            store.upsert(std::mem::take(&mut batch)).await?;
        }
    }
    store.upsert(batch).await?;
    store.commit().await?;

    // Queries: the eval questions, embedded once (embedding is timed separately).
    let mut prepared = Vec::new();
    let mut embed_ms = Vec::new();
    for q in set {
        let language = detect_language(&q.query);
        let started = Instant::now();
        let dense = if kb.has_embedder() {
            kb.embed_texts(vec![q.query.clone()]).await?.pop()
        } else {
            None
        };
        embed_ms.push(started.elapsed().as_secs_f64() * 1e3);
        prepared.push((language, dense, bm25.query(&q.query, language)));
    }
    let mut hybrid = Vec::new();
    let mut sparse_only = Vec::new();
    for i in 0..args.latency_queries {
        let (language, dense, sparse) = &prepared[i % prepared.len()];
        let filter = PayloadFilter {
            language: Some(language.as_str()),
            max_risk_rank: Some(rng.random_range(1..=5)),
            ..PayloadFilter::default()
        };
        for (with_dense, out) in [(true, &mut hybrid), (false, &mut sparse_only)] {
            let query = StoreQuery {
                dense: if with_dense { dense.clone() } else { None },
                sparse: Some(sparse.clone()),
                filter: filter.clone(),
                limit: 10,
                prefetch: 40,
            };
            let started = Instant::now();
            let hits = store
                .query_blocking(&query)
                .expect("the latency corpus is an Edge shard")?;
            out.push(started.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(hits);
        }
    }
    let (h, b, e) = (sorted(hybrid), sorted(sparse_only), sorted(embed_ms));
    Ok(LatencyReport {
        chunks: args.latency_chunks,
        queries: args.latency_queries,
        hybrid_p50_ms: percentile(&h, 0.5),
        hybrid_p99_ms: percentile(&h, 0.99),
        bm25_p50_ms: percentile(&b, 0.5),
        bm25_p99_ms: percentile(&b, 0.99),
        embed_p50_ms: percentile(&e, 0.5),
        embed_p99_ms: percentile(&e, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let ranking: Vec<String> = ["A", "B", "C", "D", "E", "F"].map(String::from).to_vec();
        let (r, n, rr) = score(&ranking, &["B".into()]);
        assert_eq!(r, 1.0);
        assert!((n - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert_eq!(rr, 0.5);
        let (r, _, rr) = score(&ranking, &["F".into(), "A".into()]);
        assert_eq!(r, 0.5);
        assert_eq!(rr, 1.0);
        let (r, n, rr) = score(&ranking, &["Z".into()]);
        assert_eq!((r, n, rr), (0.0, 0.0, 0.0));
    }

    #[test]
    fn the_shipped_eval_set_is_well_formed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = load_eval_set(&root.join("knowledge/eval/retrieval.jsonl")).unwrap();
        assert!(set.len() >= 120, "{}", set.len());
        let zh = set.iter().filter(|q| q.lang == "zh-CN").count();
        assert!(
            zh * 2 >= set.len() - 2 && zh * 2 <= set.len() + 2,
            "{zh} of {}",
            set.len()
        );
        let docs = super::super::load_documents(&root.join("knowledge")).unwrap();
        for q in &set {
            assert!(!q.relevant.is_empty(), "{}", q.id);
            for r in &q.relevant {
                assert!(
                    docs.iter().any(|d| &d.id == r),
                    "{}: unknown document {r}",
                    q.id
                );
            }
        }
        let mut ids: Vec<&str> = set.iter().map(|q| q.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), set.len(), "ids are unique");
    }
}
