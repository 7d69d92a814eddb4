//! The executor: one code path that schedules, sends and records
//! requests level by level ([`sweep`]: open loop through the [`pacer`],
//! closed loop through [`closed_loop`] workers; multi-turn [`session`]s in
//! either), runs a plan of levels into
//! a results directory ([`runner`]), and probes for capacity ([`capacity`]).

pub mod capacity;
pub mod closed_loop;
pub mod lead;
pub mod level;
pub mod pacer;
pub mod request;
pub mod runner;
pub mod session;
pub mod sweep;

pub use closed_loop::workers_of;
