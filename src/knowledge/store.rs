//! The vector store behind one interface, two real backends: Qdrant Edge in-process (the
//! embedded default, on disk under the data directory) and a Qdrant server through
//! `qdrant-client` (set `qdrant_url`).
//!
//! Each point is one chunk: a named dense vector `dense` (when an embedding model is
//! loaded), a named sparse vector `bm25` with the IDF modifier, and the chunk's payload.
//! Points are keyed by a UUID derived from the chunk's document version and position, so
//! the set of ids says exactly which versions a store holds.
//!
//! Qdrant Edge is synchronous and wants a single writer: every call runs on the blocking
//! pool, writes (upsert, delete, flush, optimize) take the write side of a lock and
//! queries the read side.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::sparse::Sparse;

pub const DENSE: &str = "dense";
pub const SPARSE: &str = "bm25";

/// Reciprocal-rank-fusion constant (the usual 60).
const RRF_K: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vector store (Qdrant Edge at {path}): {message}")]
    Edge { path: PathBuf, message: String },
    #[error("vector store (Qdrant server {url}): {message}")]
    Server { url: String, message: String },
}

/// One chunk as stored.
#[derive(Debug, Clone)]
pub struct Point {
    pub id: Uuid,
    pub dense: Option<Vec<f32>>,
    pub sparse: Sparse,
    pub payload: Map<String, Value>,
}

/// Restricts a search by payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayloadFilter {
    pub language: Option<&'static str>,
    /// `product` / `faq`; empty: both.
    pub kinds: Vec<&'static str>,
    pub product_types: Vec<String>,
    pub product_ids: Vec<String>,
    /// Excludes product chunks rated above this R rank (FAQ chunks have no rank and pass).
    pub max_risk_rank: Option<u8>,
    /// Excludes product chunks whose SRI is above this.
    pub max_sri: Option<u8>,
}

/// What to search with. With both vectors the two rankings are fused (RRF).
#[derive(Debug, Clone)]
pub struct StoreQuery {
    pub dense: Option<Vec<f32>>,
    pub sparse: Option<Sparse>,
    pub filter: PayloadFilter,
    pub limit: usize,
    /// How many candidates each side contributes to the fusion.
    pub prefetch: usize,
}

#[derive(Debug, Clone)]
pub struct StoreHit {
    pub id: Uuid,
    pub score: f32,
    pub payload: Map<String, Value>,
}

/// The payload fields searches filter on, and their index types.
const INDEXED: [(&str, &str); 7] = [
    ("language", "keyword"),
    ("kind", "keyword"),
    ("doc_id", "keyword"),
    ("product_id", "keyword"),
    ("product_type", "keyword"),
    ("risk_rank", "integer"),
    ("sri", "integer"),
];

impl PayloadFilter {
    /// The filter in Qdrant's JSON form (shared by Edge and, converted, the server).
    fn to_json(&self) -> Value {
        let mut must = Vec::new();
        if let Some(l) = self.language {
            must.push(json!({"key": "language", "match": {"value": l}}));
        }
        for (key, values) in [
            (
                "kind",
                self.kinds.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
            ("product_type", self.product_types.clone()),
            ("product_id", self.product_ids.clone()),
        ] {
            if !values.is_empty() {
                must.push(json!({"key": key, "match": {"any": values}}));
            }
        }
        let mut must_not = Vec::new();
        if let Some(r) = self.max_risk_rank {
            must_not.push(json!({"key": "risk_rank", "range": {"gt": r}}));
        }
        if let Some(s) = self.max_sri {
            must_not.push(json!({"key": "sri", "range": {"gt": s}}));
        }
        json!({"must": must, "must_not": must_not})
    }
}

/// The store, either backend.
#[derive(Clone)]
pub enum VectorStore {
    Edge(Arc<EdgeStore>),
    Server(Arc<ServerStore>),
}

impl std::fmt::Debug for VectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl VectorStore {
    pub fn describe(&self) -> String {
        match self {
            VectorStore::Edge(e) => format!("Qdrant Edge at {}", e.path.display()),
            VectorStore::Server(s) => format!("Qdrant server {} ({})", s.url, s.collection),
        }
    }

    /// Opens (or creates) an Edge shard in `path`, with a dense vector of `dims` when given.
    pub async fn open_edge(path: &Path, dims: Option<usize>) -> Result<VectorStore, StoreError> {
        let path = path.to_path_buf();
        let store = tokio::task::spawn_blocking(move || EdgeStore::open(path, dims))
            .await
            .expect("the Edge open task does not panic")?;
        Ok(VectorStore::Edge(Arc::new(store)))
    }

    /// Connects to a Qdrant server and makes sure the collection exists with the right
    /// vectors and payload indexes.
    pub async fn connect_server(
        url: &str,
        api_key: Option<&str>,
        collection: &str,
        dims: Option<usize>,
    ) -> Result<VectorStore, StoreError> {
        let store = ServerStore::connect(url, api_key, collection, dims).await?;
        Ok(VectorStore::Server(Arc::new(store)))
    }

    pub async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        match self {
            VectorStore::Edge(e) => {
                let e = e.clone();
                blocking(move || e.upsert(points)).await
            }
            VectorStore::Server(s) => s.upsert(points).await,
        }
    }

    pub async fn delete(&self, ids: Vec<Uuid>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            VectorStore::Edge(e) => {
                let e = e.clone();
                blocking(move || e.delete(ids)).await
            }
            VectorStore::Server(s) => s.delete(ids).await,
        }
    }

    /// Every point id the store holds.
    pub async fn ids(&self) -> Result<HashSet<Uuid>, StoreError> {
        match self {
            VectorStore::Edge(e) => {
                let e = e.clone();
                blocking(move || e.ids()).await
            }
            VectorStore::Server(s) => s.ids().await,
        }
    }

    pub async fn query(&self, query: StoreQuery) -> Result<Vec<StoreHit>, StoreError> {
        if query.dense.is_none() && query.sparse.as_ref().is_none_or(Sparse::is_empty) {
            return Ok(Vec::new());
        }
        match self {
            VectorStore::Edge(e) => {
                let e = e.clone();
                blocking(move || e.query(&query)).await
            }
            VectorStore::Server(s) => s.query(query).await,
        }
    }

    /// Makes writes durable and compacts the index (Edge has no background optimiser).
    pub async fn commit(&self) -> Result<(), StoreError> {
        match self {
            VectorStore::Edge(e) => {
                let e = e.clone();
                blocking(move || e.commit()).await
            }
            VectorStore::Server(_) => Ok(()),
        }
    }

    /// Runs a query on the calling thread (Edge only; for latency benchmarks that must
    /// not measure the blocking pool's hand-off).
    pub fn query_blocking(&self, query: &StoreQuery) -> Option<Result<Vec<StoreHit>, StoreError>> {
        match self {
            VectorStore::Edge(e) => Some(e.query(query)),
            VectorStore::Server(_) => None,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a vector store task does not panic")
}

// ---------------------------------------------------------------------------------------
// Qdrant Edge

pub struct EdgeStore {
    path: PathBuf,
    /// Always `Some` until dropped (see the `Drop` impl).
    shard: Option<RwLock<qdrant_edge::EdgeShard>>,
    dense: bool,
}

impl Drop for EdgeStore {
    /// Qdrant Edge flushes on drop and panics when that fails, which it does when its
    /// directory has been removed under it: the shard is then abandoned (its memory
    /// leaks) rather than taking the process down, and any other flush failure is logged.
    fn drop(&mut self) {
        let Some(shard) = self.shard.take() else {
            return;
        };
        if !self.path.exists() {
            tracing::warn!(path = %self.path.display(), "the vector store's directory is gone; not flushing it");
            std::mem::forget(shard);
            return;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(shard))).is_err() {
            tracing::error!(path = %self.path.display(), "flushing the vector store on close failed");
        }
    }
}

impl EdgeStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, qdrant_edge::EdgeShard> {
        self.shard
            .as_ref()
            .expect("the shard is present until drop")
            .read()
            .expect("the Edge lock is not poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, qdrant_edge::EdgeShard> {
        self.shard
            .as_ref()
            .expect("the shard is present until drop")
            .write()
            .expect("the Edge lock is not poisoned")
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Edge {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn open(path: PathBuf, dims: Option<usize>) -> Result<EdgeStore, StoreError> {
        use qdrant_edge::{
            Distance, EdgeConfigBuilder, EdgeShard, EdgeSparseVectorParamsBuilder,
            EdgeVectorParamsBuilder, Modifier,
        };
        let fail = |e: &dyn std::fmt::Display| StoreError::Edge {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&path).map_err(|e| fail(&e))?;
        let mut builder = EdgeConfigBuilder::new().sparse_vector(
            SPARSE,
            EdgeSparseVectorParamsBuilder::new()
                .modifier(Modifier::Idf)
                .build(),
        );
        if let Some(dims) = dims {
            builder = builder.vector(
                DENSE,
                EdgeVectorParamsBuilder::new(dims, Distance::Cosine).build(),
            );
        }
        let config = builder.build();
        let existing = path.join("edge_config.json").exists();
        let shard = if existing {
            EdgeShard::load(&path, Some(config)).map_err(|e| fail(&e))?
        } else {
            EdgeShard::new(&path, config).map_err(|e| fail(&e))?
        };
        let store = EdgeStore {
            path: path.clone(),
            shard: Some(RwLock::new(shard)),
            dense: dims.is_some(),
        };
        if !existing {
            store.create_indexes()?;
        }
        Ok(store)
    }

    fn create_indexes(&self) -> Result<(), StoreError> {
        use qdrant_edge::{CreateIndex, FieldIndexOperations, JsonPath, UpdateOperation};
        let shard = self.write();
        for (field, kind) in INDEXED {
            let schema = serde_json::from_value(json!(kind)).map_err(|e| self.fail(e))?;
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: field
                            .parse::<JsonPath>()
                            .map_err(|()| self.fail(format!("bad field path {field}")))?,
                        field_schema: Some(schema),
                    }),
                ))
                .map_err(|e| self.fail(e))?;
        }
        shard.flush();
        Ok(())
    }

    fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        use qdrant_edge::{PointInsertOperations, PointOperations, PointStruct, UpdateOperation};
        let points: Vec<_> = points
            .into_iter()
            .map(|p| {
                let mut vectors: Vec<(String, qdrant_edge::Vector)> = vec![(
                    SPARSE.to_string(),
                    qdrant_edge::Vector::new_sparse(p.sparse.indices, p.sparse.values)
                        .map_err(|e| self.fail(e))?,
                )];
                if let (true, Some(dense)) = (self.dense, p.dense) {
                    vectors.push((DENSE.to_string(), qdrant_edge::Vector::new_dense(dense)));
                }
                Ok(PointStruct::new(
                    qdrant_edge::PointId::Uuid(p.id),
                    vectors,
                    Value::Object(p.payload),
                )
                .into())
            })
            .collect::<Result<_, StoreError>>()?;
        let shard = self.write();
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(|e| self.fail(e))
    }

    fn delete(&self, ids: Vec<Uuid>) -> Result<(), StoreError> {
        use qdrant_edge::{PointOperations, UpdateOperation};
        let shard = self.write();
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints {
                    ids: ids.into_iter().map(qdrant_edge::PointId::Uuid).collect(),
                },
            ))
            .map_err(|e| self.fail(e))
    }

    fn commit(&self) -> Result<(), StoreError> {
        let shard = self.write();
        shard.flush();
        shard.optimize().map_err(|e| self.fail(e))?;
        shard.flush();
        Ok(())
    }

    fn ids(&self) -> Result<HashSet<Uuid>, StoreError> {
        use qdrant_edge::{PointId, ScrollRequest, WithPayloadInterface, WithVector};
        let shard = self.read();
        let mut ids = HashSet::new();
        let mut offset = None;
        loop {
            let (records, next) = shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(1000),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(false)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(|e| self.fail(e))?;
            for r in records {
                match r.id {
                    PointId::Uuid(u) => ids.insert(u),
                    PointId::NumId(n) => ids.insert(Uuid::from_u128(n as u128)),
                };
            }
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(ids),
            }
        }
    }

    fn query(&self, q: &StoreQuery) -> Result<Vec<StoreHit>, StoreError> {
        use qdrant_edge::{
            Filter, Fusion, NamedQuery, Prefetch, QueryEnum, QueryRequest, ScoringQuery,
            VectorInternal, WithPayloadInterface, WithVector,
        };
        let filter: Filter =
            serde_json::from_value(q.filter.to_json()).map_err(|e| self.fail(e))?;
        let nearest = |vector: VectorInternal, using: &str| {
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: vector,
                using: Some(using.into()),
            }))
        };
        let mut sides = Vec::new();
        if let (true, Some(dense)) = (self.dense, &q.dense) {
            sides.push(nearest(VectorInternal::Dense(dense.clone()), DENSE));
        }
        if let Some(sparse) = q.sparse.as_ref().filter(|s| !s.is_empty()) {
            let v = qdrant_edge::SparseVector {
                indices: sparse.indices.clone(),
                values: sparse.values.clone(),
            };
            sides.push(nearest(VectorInternal::Sparse(v), SPARSE));
        }
        let (prefetches, query) = match sides.len() {
            0 => return Ok(Vec::new()),
            1 => (Vec::new(), sides.pop()),
            _ => (
                sides
                    .into_iter()
                    .map(|side| Prefetch {
                        prefetches: Vec::new(),
                        query: Some(side),
                        limit: q.prefetch.max(q.limit),
                        params: None,
                        filter: None,
                        score_threshold: None,
                    })
                    .collect(),
                Some(ScoringQuery::Fusion(Fusion::Rrf {
                    k: RRF_K,
                    weights: None,
                })),
            ),
        };
        let request = QueryRequest {
            prefetches,
            query,
            filter: Some(filter),
            score_threshold: None,
            limit: q.limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let shard = self.read();
        let points = shard.query(request).map_err(|e| self.fail(e))?;
        Ok(points
            .into_iter()
            .filter_map(|p| {
                let id = match p.id {
                    qdrant_edge::PointId::Uuid(u) => u,
                    qdrant_edge::PointId::NumId(n) => Uuid::from_u128(n as u128),
                };
                Some(StoreHit {
                    id,
                    score: p.score,
                    payload: p.payload?.0.into_iter().collect(),
                })
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// Qdrant server

pub struct ServerStore {
    url: String,
    collection: String,
    client: qdrant_client::Qdrant,
    dense: bool,
}

impl ServerStore {
    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Server {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    async fn connect(
        url: &str,
        api_key: Option<&str>,
        collection: &str,
        dims: Option<usize>,
    ) -> Result<ServerStore, StoreError> {
        use qdrant_client::qdrant::{
            CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType,
            Modifier, SparseVectorParamsBuilder, SparseVectorsConfigBuilder, VectorParamsBuilder,
            VectorsConfigBuilder,
        };
        let mut builder = qdrant_client::Qdrant::from_url(url).skip_compatibility_check();
        if let Some(key) = api_key {
            builder = builder.api_key(key.to_string());
        }
        let fail = |e: &dyn std::fmt::Display| StoreError::Server {
            url: url.to_string(),
            message: e.to_string(),
        };
        let client = builder.build().map_err(|e| fail(&e))?;
        let store = ServerStore {
            url: url.to_string(),
            collection: collection.to_string(),
            client,
            dense: dims.is_some(),
        };
        let exists = store
            .client
            .collection_exists(collection)
            .await
            .map_err(|e| store.fail(e))?;
        if !exists {
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(
                SPARSE,
                SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
            );
            let mut create = CreateCollectionBuilder::new(collection).sparse_vectors_config(sparse);
            if let Some(dims) = dims {
                let mut vectors = VectorsConfigBuilder::default();
                vectors.add_named_vector_params(
                    DENSE,
                    VectorParamsBuilder::new(dims as u64, Distance::Cosine),
                );
                create = create.vectors_config(vectors);
            }
            store
                .client
                .create_collection(create)
                .await
                .map_err(|e| store.fail(e))?;
            for (field, kind) in INDEXED {
                let kind = if kind == "integer" {
                    FieldType::Integer
                } else {
                    FieldType::Keyword
                };
                store
                    .client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(collection, field, kind).wait(true),
                    )
                    .await
                    .map_err(|e| store.fail(e))?;
            }
        }
        Ok(store)
    }

    async fn upsert(&self, points: Vec<Point>) -> Result<(), StoreError> {
        use qdrant_client::qdrant::{NamedVectors, PointStruct, UpsertPointsBuilder, Vector};
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let mut vectors = NamedVectors::default().add_vector(
                    SPARSE,
                    Vector::new_sparse(p.sparse.indices, p.sparse.values),
                );
                if let (true, Some(dense)) = (self.dense, p.dense) {
                    vectors = vectors.add_vector(DENSE, Vector::new_dense(dense));
                }
                let payload = qdrant_client::Payload::try_from(Value::Object(p.payload))
                    .map_err(|e| self.fail(e))?;
                Ok(PointStruct::new(p.id.to_string(), vectors, payload))
            })
            .collect::<Result<_, StoreError>>()?;
        for batch in points.chunks(256) {
            self.client
                .upsert_points(
                    UpsertPointsBuilder::new(&self.collection, batch.to_vec()).wait(true),
                )
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    async fn delete(&self, ids: Vec<Uuid>) -> Result<(), StoreError> {
        use qdrant_client::qdrant::{DeletePointsBuilder, PointId, PointsIdsList};
        let ids: Vec<PointId> = ids.iter().map(|u| u.to_string().into()).collect();
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(PointsIdsList { ids })
                    .wait(true),
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn ids(&self) -> Result<HashSet<Uuid>, StoreError> {
        use qdrant_client::qdrant::{ScrollPointsBuilder, point_id::PointIdOptions};
        let mut ids = HashSet::new();
        let mut offset = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .limit(1000)
                .with_payload(false)
                .with_vectors(false);
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            let page = self
                .client
                .scroll(request)
                .await
                .map_err(|e| self.fail(e))?;
            for p in page.result {
                if let Some(PointIdOptions::Uuid(u)) = p.id.and_then(|i| i.point_id_options) {
                    ids.insert(u.parse().map_err(|e| self.fail(e))?);
                }
            }
            match page.next_page_offset {
                Some(o) => offset = Some(o),
                None => return Ok(ids),
            }
        }
    }

    async fn query(&self, q: StoreQuery) -> Result<Vec<StoreHit>, StoreError> {
        use qdrant_client::qdrant::{
            Fusion, PrefetchQueryBuilder, Query, QueryPointsBuilder, VectorInput,
            point_id::PointIdOptions,
        };
        let filter = server_filter(&q.filter);
        let mut sides: Vec<(VectorInput, &str)> = Vec::new();
        if let (true, Some(dense)) = (self.dense, q.dense) {
            sides.push((VectorInput::new_dense(dense), DENSE));
        }
        if let Some(sparse) = q.sparse.filter(|s| !s.is_empty()) {
            sides.push((
                VectorInput::new_sparse(sparse.indices, sparse.values),
                SPARSE,
            ));
        }
        let mut request = QueryPointsBuilder::new(&self.collection)
            .filter(filter)
            .limit(q.limit as u64)
            .with_payload(true);
        match sides.len() {
            0 => return Ok(Vec::new()),
            1 => {
                let (vector, using) = sides.pop().expect("one side");
                request = request.query(Query::new_nearest(vector)).using(using);
            }
            _ => {
                for (vector, using) in sides {
                    request = request.add_prefetch(
                        PrefetchQueryBuilder::default()
                            .query(Query::new_nearest(vector))
                            .using(using)
                            .limit(q.prefetch.max(q.limit) as u64),
                    );
                }
                request = request.query(Query::new_fusion(Fusion::Rrf));
            }
        }
        let response = self.client.query(request).await.map_err(|e| self.fail(e))?;
        let mut hits = Vec::new();
        for p in response.result {
            let Some(PointIdOptions::Uuid(id)) = p.id.and_then(|i| i.point_id_options) else {
                continue;
            };
            let payload: Map<String, Value> = p
                .payload
                .into_iter()
                .map(|(k, v)| (k, v.into_json()))
                .collect();
            hits.push(StoreHit {
                id: id.parse().map_err(|e| self.fail(e))?,
                score: p.score,
                payload,
            });
        }
        Ok(hits)
    }
}

/// The payload filter as the server's gRPC filter.
fn server_filter(f: &PayloadFilter) -> qdrant_client::qdrant::Filter {
    use qdrant_client::qdrant::{Condition, Filter, Range};
    let mut must = Vec::new();
    if let Some(l) = f.language {
        must.push(Condition::matches("language", l.to_string()));
    }
    if !f.kinds.is_empty() {
        let kinds: Vec<String> = f.kinds.iter().map(|k| k.to_string()).collect();
        must.push(Condition::matches("kind", kinds));
    }
    if !f.product_types.is_empty() {
        must.push(Condition::matches("product_type", f.product_types.clone()));
    }
    if !f.product_ids.is_empty() {
        must.push(Condition::matches("product_id", f.product_ids.clone()));
    }
    let mut must_not = Vec::new();
    for (key, cap) in [("risk_rank", f.max_risk_rank), ("sri", f.max_sri)] {
        if let Some(cap) = cap {
            must_not.push(Condition::range(
                key,
                Range {
                    gt: Some(f64::from(cap)),
                    ..Range::default()
                },
            ));
        }
    }
    Filter {
        must,
        must_not,
        ..Filter::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> PayloadFilter {
        PayloadFilter {
            language: Some("zh-CN"),
            kinds: vec!["product"],
            product_types: vec!["equity".into()],
            product_ids: Vec::new(),
            max_risk_rank: Some(2),
            max_sri: None,
        }
    }

    #[test]
    fn the_edge_filter_parses_as_qdrant_json() {
        let f: qdrant_edge::Filter = serde_json::from_value(filter().to_json()).unwrap();
        assert_eq!(f.must.as_ref().map(Vec::len), Some(3));
        assert_eq!(f.must_not.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn the_server_filter_carries_the_same_conditions() {
        let f = server_filter(&filter());
        assert_eq!(f.must.len(), 3);
        assert_eq!(f.must_not.len(), 1);
        let text = format!("{:?}", f.must_not[0]);
        assert!(
            text.contains("risk_rank") && text.contains("gt: Some(2.0)"),
            "{text}"
        );
    }
}
