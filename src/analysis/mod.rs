//! What a run concludes, all pure: HDR statistics per level, SLOs,
//! backlog stability, the saturation analysis, the capacity search,
//! regression verdicts (`compare`), shard merges and the run summary.

pub mod compare;
pub mod compare_cache;
pub mod dist;
pub mod knee;
pub mod level;
pub mod merge;
pub mod noise;
pub mod saturation;
pub mod search;
pub mod series;
pub mod sessions;
pub mod slo;
pub mod stability;
pub mod stats;
pub mod summary;
