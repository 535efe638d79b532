//! `GET /v1/knowledge/search` and `GET /v1/knowledge/documents/{id}`: hybrid search over
//! the knowledge base with citations, and the exact document version a citation names.
//!
//! For a client, `purpose=recommend` searches only products at or below the level of
//! their valid risk profile (with no valid profile, only the FAQs); `purpose=fact` (the
//! default) searches everything and flags hits above their level, so a question about a
//! named product is answered from its sheet with the warning attached.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::index::{Citation, DocumentVersion, SearchMode, SearchRequest};
use super::products::ProductType;
use super::store::PayloadFilter;
use crate::app::AppState;
use crate::auth::{AuthUser, Role};
use crate::error::{AppError, Result};
use crate::http::{ApiPath, ApiQuery};
use crate::im::Language;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/knowledge/search", get(search))
        .route("/v1/knowledge/documents/{id}", get(document))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// The question, in zh-CN or English.
    pub q: String,
    /// `zh-CN` or `en`; read off the question when absent.
    pub lang: Option<String>,
    /// `fact` (default) or `recommend`.
    pub purpose: Option<String>,
    /// `hybrid` (default), `bm25` or `dense`.
    pub mode: Option<String>,
    /// Comma-separated product types, e.g. `money_market,short_bond`.
    #[serde(rename = "type")]
    pub product_type: Option<String>,
    /// Only this product's sheet.
    pub product: Option<String>,
    /// `product` or `faq`.
    pub kind: Option<String>,
    /// 1 to 20 (default 5).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    pub citation: Citation,
    /// The product is rated above the asking client's level (or the client has no valid
    /// profile): it may be explained, never recommended.
    pub above_client_level: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub query: String,
    pub language: String,
    /// The ranking used: `hybrid`, or `bm25` where no embedding model covers the language.
    pub mode: String,
    pub purpose: String,
    /// The level that filtered or flagged the hits (a client's `max_product`), if any.
    pub max_product: Option<String>,
    /// A recommendation was asked for without a valid risk profile: only FAQs searched.
    pub profile_required: bool,
    pub hits: Vec<SearchHit>,
    pub took_ms: f64,
}

/// Searches the knowledge base.
#[utoipa::path(get, path = "/v1/knowledge/search", tag = "knowledge",
    params(SearchParams),
    responses((status = 200, body = SearchResponse),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchResponse>> {
    let started = std::time::Instant::now();
    let bad = |m: String| AppError::InvalidQuery(m);
    if params.q.trim().is_empty() || params.q.chars().count() > 1000 {
        return Err(bad("q must be 1 to 1000 characters".into()));
    }
    let language = match params.lang.as_deref() {
        Some(l) => Some(l.parse::<Language>().map_err(bad)?),
        None => None,
    };
    let recommend = match params.purpose.as_deref().unwrap_or("fact") {
        "fact" => false,
        "recommend" => true,
        other => return Err(bad(format!("purpose {other:?} is not fact or recommend"))),
    };
    let mode = match params.mode.as_deref() {
        None => SearchMode::Hybrid,
        Some(m) => SearchMode::parse(m)
            .ok_or_else(|| bad(format!("mode {m:?} is not hybrid, bm25 or dense")))?,
    };
    let limit = params.limit.unwrap_or(5);
    if !(1..=20).contains(&limit) {
        return Err(bad("limit must be between 1 and 20".into()));
    }
    let mut filter = PayloadFilter::default();
    if let Some(types) = &params.product_type {
        for t in types.split(',').map(str::trim) {
            let t = ProductType::parse(t).ok_or_else(|| {
                bad(format!(
                    "type {t:?} is not a product type ({})",
                    ProductType::ALL.map(ProductType::as_str).join(", ")
                ))
            })?;
            filter.product_types.push(t.as_str().to_string());
        }
    }
    if let Some(p) = &params.product {
        filter.product_ids.push(p.trim().to_ascii_uppercase());
    }
    match params.kind.as_deref() {
        None => {}
        Some("product") => filter.kinds = vec!["product"],
        Some("faq") => filter.kinds = vec!["faq"],
        Some(other) => return Err(bad(format!("kind {other:?} is not product or faq"))),
    }
    // Whose level applies: a client's own valid profile.
    let mut max_product = None;
    if user.role == Role::Client {
        max_product = crate::questionnaire::profile::current(&state.db, &user.id)
            .await?
            .map(|p| p.max_product);
    }
    let cap = max_product.as_deref().map(Cap::parse);
    let mut profile_required = false;
    if recommend && user.role == Role::Client {
        match cap {
            Some(cap) => cap.restrict(&mut filter),
            None => {
                profile_required = true;
                filter.kinds = vec!["faq"];
            }
        }
    }
    let request = SearchRequest {
        query: params.q.clone(),
        language,
        mode,
        limit,
        filter,
    };
    let result = state
        .knowledge
        .search(&request)
        .await
        .map_err(|e| match e {
            super::index::KnowledgeError::NoEmbeddingModel
            | super::index::KnowledgeError::NoDenseLanguage(_) => bad(e.to_string()),
            e => e.into(),
        })?;
    let hits = result
        .hits
        .into_iter()
        .map(|citation| {
            let above = citation.kind == "product"
                && user.role == Role::Client
                && cap.is_none_or(|c| c.exceeded_by(&citation));
            SearchHit {
                citation,
                above_client_level: above,
            }
        })
        .collect();
    Ok(Json(SearchResponse {
        query: params.q,
        language: result.language.as_str().into(),
        mode: serde_json::to_value(result.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        purpose: if recommend { "recommend" } else { "fact" }.into(),
        max_product,
        profile_required,
        hits,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    }))
}

/// A client's ceiling on one of the two product scales.
#[derive(Debug, Clone, Copy)]
pub enum Cap {
    Rank(u8),
    Sri(u8),
    /// An unknown scale: nothing passes.
    Nothing,
}

impl Cap {
    /// From a profile's highest allowed product level (`R3`, `SRI4`).
    pub fn parse(max_product: &str) -> Cap {
        if let Some(n) = max_product.strip_prefix("SRI") {
            n.parse().map_or(Cap::Nothing, Cap::Sri)
        } else if let Some(n) = max_product.strip_prefix('R') {
            n.parse().map_or(Cap::Nothing, Cap::Rank)
        } else {
            Cap::Nothing
        }
    }

    /// Narrows a search to what the cap allows (FAQs always pass).
    pub fn restrict(self, filter: &mut PayloadFilter) {
        match self {
            Cap::Rank(r) => filter.max_risk_rank = Some(r),
            Cap::Sri(s) => filter.max_sri = Some(s),
            Cap::Nothing => filter.kinds = vec!["faq"],
        }
    }

    pub fn exceeded_by(self, c: &Citation) -> bool {
        let rank = c
            .risk_level
            .as_deref()
            .and_then(|l| l.get(1..)?.parse::<u8>().ok());
        match self {
            Cap::Rank(r) => rank.is_none_or(|x| x > r),
            Cap::Sri(s) => c.sri.is_none_or(|x| x > s),
            Cap::Nothing => true,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DocumentParams {
    /// A version hash from a citation; the current version when absent.
    pub version: Option<String>,
}

/// A knowledge document at the version a citation names.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}", tag = "knowledge",
    params(("id" = String, Path, description = "document id, e.g. HB-MMF-01"), DocumentParams),
    responses((status = 200, body = DocumentVersion),
        (status = 404, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn document(
    State(state): State<AppState>,
    _user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DocumentParams>,
) -> Result<Json<DocumentVersion>> {
    let doc = state
        .knowledge
        .document(&id, params.version.as_deref())
        .await?;
    match doc {
        Some(d) => Ok(Json(d)),
        None => Err(AppError::DocumentNotFound(match params.version {
            Some(v) => format!("{id} at version {v}"),
            None => id,
        })),
    }
}
