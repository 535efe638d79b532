//! The knowledge base: ingest (idempotent, updates, deletions, broken files), hybrid
//! search with the suitability filter and citations, on Qdrant Edge (and on a Qdrant
//! server when `WEALTHDESK_QDRANT_URL` is set).

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::Value;
use wealthdesk::auth::Role;
use wealthdesk::config::Config;
use wealthdesk::db::Db;
use wealthdesk::im::Language;
use wealthdesk::knowledge::store::PayloadFilter;
use wealthdesk::knowledge::{KnowledgeBase, SearchMode, SearchRequest};

use crate::helpers::{Store, TestApp, assert_error, spawn_app_with, test_config};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge")
}

/// A small knowledge base in a temp dir: three sheets (R1, R2, R4) and two FAQs, copied
/// from the shipped one.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = shipped();
    for (sub, file) in [
        ("products", "hb-mmf-01.md"),
        ("products", "hb-sbf-02.md"),
        ("products", "hb-eqf-05.md"),
        ("faq", "faq-redemption.md"),
        ("faq", "faq-risk-levels.md"),
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        let from = root.join(sub).join(file);
        std::fs::copy(&from, dir.path().join(sub).join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    dir
}

/// A knowledge base on `store` with its own data dir; `adjust` may change the config.
async fn open(
    store: Store,
    data_dir: &Path,
    adjust: impl FnOnce(&mut Config),
) -> (KnowledgeBase, Db, Option<crate::helpers::TestDatabase>) {
    let mut config = test_config(data_dir);
    let mut guard = None;
    if store == Store::Postgres {
        let (url, db) = crate::helpers::create_postgres_database().await;
        config.database_url = Some(wealthdesk::config::Secret::new(url));
        guard = Some(db);
    }
    adjust(&mut config);
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    let kb = KnowledgeBase::open(&config, db.clone()).await.unwrap();
    (kb, db, guard)
}

async fn doc_ids(kb: &KnowledgeBase, query: &str, filter: PayloadFilter) -> Vec<String> {
    let mut request = SearchRequest::new(query);
    request.limit = 10;
    request.filter = filter;
    kb.search(&request)
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| h.doc_id)
        .collect()
}

async fn ingest_is_idempotent_and_follows_updates_and_deletions(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let (kb, _db, _guard) = open(store, data.path(), |_| {}).await;
    let root = fixture();

    let first = kb.ingest(root.path()).await.unwrap();
    assert_eq!(first.documents, 5);
    assert_eq!(first.added.len(), 5);
    assert!(first.chunks >= 5 * 4, "{first:?}");
    assert_eq!(first.points_upserted, first.chunks);
    assert_eq!(kb.store().ids().await.unwrap().len(), first.chunks);

    // Unchanged files: nothing happens.
    let again = kb.ingest(root.path()).await.unwrap();
    assert_eq!(again.unchanged, 5);
    assert!(again.added.is_empty() && again.updated.is_empty() && again.removed.is_empty());
    assert_eq!((again.points_upserted, again.points_deleted), (0, 0));

    // A changed file replaces its chunks; the old version stays readable.
    let sheet = root.path().join("products/hb-sbf-02.md");
    let old = kb.document("HB-SBF-02", None).await.unwrap().unwrap();
    let mut text = std::fs::read_to_string(&sheet).unwrap();
    text.push_str(
        "\n## Settlement calendar\n\nZebracorn settlement holidays follow the exchange calendar.\n",
    );
    std::fs::write(&sheet, text).unwrap();
    let updated = kb.ingest(root.path()).await.unwrap();
    assert_eq!(updated.updated, vec!["HB-SBF-02".to_string()]);
    assert_eq!(updated.unchanged, 4);
    assert!(updated.points_deleted > 0 && updated.points_upserted == updated.points_deleted + 1);
    let hits = doc_ids(
        &kb,
        "zebracorn settlement holidays",
        PayloadFilter::default(),
    )
    .await;
    assert_eq!(hits.first().map(String::as_str), Some("HB-SBF-02"));
    let current = kb.document("HB-SBF-02", None).await.unwrap().unwrap();
    assert_ne!(current.version_hash, old.version_hash);
    let previous = kb
        .document("HB-SBF-02", Some(&old.version_hash))
        .await
        .unwrap()
        .unwrap();
    assert!(!previous.current && previous.retired_at.is_some());
    assert!(!previous.source.contains("Zebracorn"));

    // A deleted file takes its chunks with it.
    std::fs::remove_file(root.path().join("products/hb-eqf-05.md")).unwrap();
    let removed = kb.ingest(root.path()).await.unwrap();
    assert_eq!(removed.removed, vec!["HB-EQF-05".to_string()]);
    let only = PayloadFilter {
        product_ids: vec!["HB-EQF-05".into()],
        ..PayloadFilter::default()
    };
    assert!(doc_ids(&kb, "equity fund growth", only).await.is_empty());
    assert!(kb.document("HB-EQF-05", None).await.unwrap().is_none());
    let (docs, chunks) = kb.counts().await.unwrap();
    assert_eq!(docs, 4);
    assert_eq!(kb.store().ids().await.unwrap().len() as i64, chunks);
}

async fn broken_files_fail_with_file_and_field_and_change_nothing(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let (kb, _db, _guard) = open(store, data.path(), |_| {}).await;
    let root = fixture();
    kb.ingest(root.path()).await.unwrap();
    let before = kb.counts().await.unwrap();
    let sheet = root.path().join("products/hb-mmf-01.md");
    let good = std::fs::read_to_string(&sheet).unwrap();
    let risk_line = good
        .lines()
        .find(|l| l.starts_with("risk_level"))
        .unwrap()
        .to_string();
    let cases = [
        (good.replace(&format!("{risk_line}\n"), ""), "risk_level"),
        (
            good.replace("type = \"money_market\"", "type = \"tulip_bulbs\""),
            "tulip_bulbs",
        ),
        (
            good.replace(
                "minimum_investment = ",
                "minimum_investment = \"one hundred\" #",
            ),
            "field minimum_investment",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&sheet, &text).unwrap();
        let err = kb.ingest(root.path()).await.unwrap_err().to_string();
        assert!(err.contains("hb-mmf-01.md"), "{err}");
        assert!(err.contains(expected), "{err}");
        assert_eq!(kb.counts().await.unwrap(), before, "nothing changed");
    }
    std::fs::write(&sheet, &good).unwrap();
    std::fs::write(
        root.path().join("faq/faq-broken.md"),
        "## no front matter\n",
    )
    .unwrap();
    let err = kb.ingest(root.path()).await.unwrap_err().to_string();
    assert!(
        err.contains("faq-broken.md") && err.contains("+++"),
        "{err}"
    );
}

async fn the_risk_filter_and_languages_hold(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let (kb, _db, _guard) = open(store, data.path(), |_| {}).await;
    kb.ingest(&shipped()).await.unwrap();
    // A C2 client's recommendation queries never reach an R3+ chunk.
    let capped = PayloadFilter {
        max_risk_rank: Some(2),
        ..PayloadFilter::default()
    };
    for query in [
        "high growth equity fund",
        "股票基金 收益高",
        "QDII global equity",
        "私募 量化",
        "REIT infrastructure",
        "what should I buy",
    ] {
        let mut request = SearchRequest::new(query);
        request.limit = 20;
        request.filter = capped.clone();
        for hit in kb.search(&request).await.unwrap().hits {
            let rank = hit
                .risk_level
                .as_deref()
                .map(|l| l[1..].parse::<u8>().unwrap());
            assert!(
                rank.is_none_or(|r| r <= 2),
                "{query}: {} is {:?}",
                hit.doc_id,
                hit.risk_level
            );
        }
    }
    // Chinese finds Chinese, English finds English; every hit is citable.
    for (query, language) in [
        ("货币基金的七日年化收益率", "zh-CN"),
        ("how does redemption work", "en"),
    ] {
        let result = kb.search(&SearchRequest::new(query)).await.unwrap();
        assert!(!result.hits.is_empty(), "{query}");
        for hit in &result.hits {
            assert_eq!(hit.language, language, "{query}: {hit:?}");
            assert_eq!(hit.version_hash.len(), 64);
            assert!(!hit.title.is_empty() && !hit.section.is_empty() && !hit.snippet.is_empty());
        }
    }
    // Nothing to search for: an empty result, not an error.
    for query in ["the of and is", "😀🙏🎉", "？？！", "   "] {
        let result = kb.search(&SearchRequest::new(query)).await.unwrap();
        assert!(result.hits.is_empty(), "{query:?}");
    }
}

async fn a_restart_reloads_the_shard_without_reingesting(store: Store) {
    let data = tempfile::tempdir().unwrap();
    let root = fixture();
    let (mut config, guard) = {
        let mut config = test_config(data.path());
        let mut guard = None;
        if store == Store::Postgres {
            let (url, db) = crate::helpers::create_postgres_database().await;
            config.database_url = Some(wealthdesk::config::Secret::new(url));
            guard = Some(db);
        }
        (config, guard)
    };
    config.knowledge.dir = root.path().to_path_buf();
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    let kb = KnowledgeBase::open(&config, db.clone()).await.unwrap();
    let report = kb.ingest(root.path()).await.unwrap();
    let before = doc_ids(&kb, "money market fund yield", PayloadFilter::default()).await;
    drop(kb);
    db.close().await;

    let db = Db::connect(&config).await.unwrap();
    let kb = KnowledgeBase::open(&config, db.clone()).await.unwrap();
    assert_eq!(kb.startup_sync(), (0, 0), "the shard came back whole");
    assert_eq!(kb.store().ids().await.unwrap().len(), report.chunks);
    assert_eq!(
        doc_ids(&kb, "money market fund yield", PayloadFilter::default()).await,
        before
    );
    let again = kb.ingest(root.path()).await.unwrap();
    assert_eq!((again.unchanged, again.points_upserted), (5, 0));

    // A node with an empty shard (new machine, same database) fills itself from the
    // database without reading any file.
    drop(kb);
    db.close().await;
    std::fs::remove_dir_all(data.path().join("vectors")).unwrap();
    let db = Db::connect(&config).await.unwrap();
    let kb = KnowledgeBase::open(&config, db.clone()).await.unwrap();
    assert_eq!(kb.startup_sync(), (report.chunks, 0));
    assert_eq!(
        doc_ids(&kb, "money market fund yield", PayloadFilter::default()).await,
        before
    );
    drop(guard);
}

async fn hybrid_search_uses_the_local_model() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").exists(),
        "run scripts/fetch-embedding-model first"
    );
    let data = tempfile::tempdir().unwrap();
    let (kb, _db, _guard) = open(Store::Sqlite, data.path(), |c| {
        c.knowledge.embedding_model_dir = Some(model.clone());
    })
    .await;
    assert!(kb.has_embedder());
    let root = fixture();
    kb.ingest(root.path()).await.unwrap();
    // One cached vector per English chunk (the model serves English only), none for
    // Chinese; an edit replaces the changed document's vectors and drops the stale ones.
    let counts =
        |db: Db| async move {
            let count = |sql: &'static str| {
                let db = db.clone();
                async move {
                    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(db.pool()).await.unwrap();
                    n
                }
            };
            (
            count("SELECT COUNT(*) FROM knowledge_embeddings").await,
            count("SELECT COUNT(DISTINCT content_hash) FROM knowledge_chunks WHERE language = 'en'")
                .await,
        )
        };
    let (cached, english) = counts(_db.clone()).await;
    assert!(english > 0);
    assert_eq!(cached, english);
    let sheet = root.path().join("products/hb-sbf-02.md");
    let text = std::fs::read_to_string(&sheet).unwrap();
    std::fs::write(
        &sheet,
        text.replace("## Summary\n\n", "## Summary\n\nRevised. "),
    )
    .unwrap();
    let edit = kb.ingest(root.path()).await.unwrap();
    assert_eq!(edit.updated, vec!["HB-SBF-02".to_string()]);
    let (cached, english) = counts(_db.clone()).await;
    assert_eq!(cached, english, "stale vectors are dropped");
    let mut zh_dense = SearchRequest::new("赎回多久到账");
    zh_dense.language = Some(Language::ZhCn);
    zh_dense.mode = SearchMode::Dense;
    let err = kb.search(&zh_dense).await.unwrap_err().to_string();
    assert!(err.contains("zh-CN"), "{err}");
    // A paraphrase with no word of the answer in it: only the dense side can find it.
    let mut request = SearchRequest::new("getting my cash back out");
    request.mode = SearchMode::Dense;
    let dense = kb.search(&request).await.unwrap();
    assert_eq!(dense.mode, SearchMode::Dense);
    assert!(!dense.hits.is_empty());
    request.mode = SearchMode::Hybrid;
    let hybrid = kb.search(&request).await.unwrap();
    assert_eq!(hybrid.mode, SearchMode::Hybrid);
    // Chinese has no dense model here: hybrid runs as BM25, and says so.
    let mut zh = SearchRequest::new("赎回多久到账");
    zh.language = Some(Language::ZhCn);
    let result = kb.search(&zh).await.unwrap();
    assert_eq!(result.mode, SearchMode::Bm25);
    assert!(
        result.hits.iter().any(|h| h.doc_id == "FAQ-REDEMPTION"),
        "{:?}",
        result.hits
    );
}

async fn the_search_api_filters_by_the_clients_profile(app: TestApp) {
    let client = app.token(Role::Client, "careful-client");
    // No profile yet: a recommendation searches the FAQs only.
    let (status, body) = app
        .get(
            "/v1/knowledge/search?q=which%20fund%20should%20I%20buy&purpose=recommend",
            &client,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["profile_required"], true);
    for hit in body["hits"].as_array().unwrap() {
        assert_eq!(hit["kind"], "faq", "{hit}");
    }
    // Option B throughout: a C2 client, allowed up to R2.
    let level = crate::questionnaire::assess_client(&app, "careful-client", 1).await;
    assert_eq!(level, "C2");
    let (_, body) = app
        .get(
            "/v1/knowledge/search?q=equity%20fund%20growth&purpose=recommend&kind=product&limit=20",
            &client,
        )
        .await;
    assert_eq!(body["max_product"], "R2");
    let hits = body["hits"].as_array().unwrap();
    assert!(!hits.is_empty(), "{body}");
    for hit in hits {
        let rank: u8 = hit["risk_level"].as_str().unwrap()[1..].parse().unwrap();
        assert!(rank <= 2, "{hit}");
        assert_eq!(hit["above_client_level"], false);
    }
    // A factual question about a named product above the level: answered, flagged.
    let (_, body) = app
        .get("/v1/knowledge/search?q=Harbour%20Growth%20Select%20Equity%20Fund%20fees&product=HB-EQF-05", &client)
        .await;
    let hit = &body["hits"][0];
    assert_eq!(hit["doc_id"], "HB-EQF-05", "{body}");
    assert_eq!(hit["above_client_level"], true);

    // The citation opens the exact version it names.
    let version = hit["version_hash"].as_str().unwrap();
    let (status, doc) = app
        .get(
            &format!("/v1/knowledge/documents/HB-EQF-05?version={version}"),
            &client,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["current"], true);
    assert!(doc["source"].as_str().unwrap().contains("HB-EQF-05"));

    assert_error(
        app.get("/v1/knowledge/documents/HB-NOPE-99", &client).await,
        StatusCode::NOT_FOUND,
        "document_not_found",
    );
    assert_error(
        app.get("/v1/knowledge/search?q=fees&purpose=advise", &client)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
    assert_error(
        app.get("/v1/knowledge/search?q=fees&type=tulips", &client)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
    assert_error(
        app.get("/v1/knowledge/search?q=fees", "not-a-token").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    let (status, body) = app
        .get("/v1/knowledge/search?q=%F0%9F%98%80", &client)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["hits"], Value::Array(Vec::new()));
}

macro_rules! knowledge_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Store::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Store::Postgres).await
                }
            )+
        }
    };
}

knowledge_tests!(
    ingest_is_idempotent_and_follows_updates_and_deletions,
    broken_files_fail_with_file_and_field_and_change_nothing,
    the_risk_filter_and_languages_hold,
    a_restart_reloads_the_shard_without_reingesting,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_search_with_the_local_model() {
    hybrid_search_uses_the_local_model().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_api_filters_by_the_clients_profile_on_sqlite() {
    let app = spawn_app_with(Store::Sqlite, |c| c.knowledge.ingest_on_start = true).await;
    the_search_api_filters_by_the_clients_profile(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_api_filters_by_the_clients_profile_on_postgres() {
    let app = spawn_app_with(Store::Postgres, |c| c.knowledge.ingest_on_start = true).await;
    the_search_api_filters_by_the_clients_profile(app).await
}

/// The same scenarios against a Qdrant server, where one is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_qdrant_server_when_configured() {
    let Ok(url) = std::env::var("WEALTHDESK_QDRANT_URL") else {
        eprintln!("WEALTHDESK_QDRANT_URL is not set: the Qdrant server scenarios are skipped");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let prefix = format!("wd_test_{}_", uuid::Uuid::new_v4().simple());
    let (kb, _db, _guard) = open(Store::Sqlite, data.path(), |c| {
        c.qdrant_url = Some(url.clone());
        c.knowledge.collection_prefix = prefix.clone();
    })
    .await;
    assert!(kb.store().describe().contains("Qdrant server"));
    let root = fixture();
    let first = kb.ingest(root.path()).await.unwrap();
    assert_eq!(kb.store().ids().await.unwrap().len(), first.chunks);
    let again = kb.ingest(root.path()).await.unwrap();
    assert_eq!(again.points_upserted, 0);
    let capped = PayloadFilter {
        max_risk_rank: Some(1),
        ..PayloadFilter::default()
    };
    for id in doc_ids(&kb, "fund fees and risk", capped).await {
        assert!(id == "HB-MMF-01" || id.starts_with("FAQ-"), "{id}");
    }
}
