//! The executor: one code path that schedules, sends and records
//! requests level by level ([`sweep`]), runs a plan of levels into a
//! results directory ([`runner`]), and probes for capacity ([`capacity`]).

pub mod capacity;
pub mod runner;
pub mod sweep;
