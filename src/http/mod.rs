//! HTTP plumbing shared by every router: our own extractor rejections, request
//! metrics, security headers, and the health and metrics endpoints.

pub mod extract;
pub mod health;
pub mod metrics;

pub use extract::{ApiJson, ApiPath, ApiQuery};
