//! The knowledge the bot speaks from. For now: the product sheets and their facts.

pub mod products;

pub use products::{Catalog, Product};
