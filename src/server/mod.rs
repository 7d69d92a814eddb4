//! What the server says about itself: its Prometheus exposition
//! parsed and reduced per server family ([`metrics`]), the per-level
//! server view ([`view`]), and bounded scraping ([`scrape`]).

pub mod metrics;
pub mod scrape;
pub mod view;
