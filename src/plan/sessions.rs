//! What a level's sessions send: the sessions, the request parameters
//! their turns are built with, and the think time between turns.

use crate::plan::think::ThinkTime;
use crate::workload::request::BodyParams;
use crate::workload::session::Session;

/// What a level's sessions send.
#[derive(Debug)]
pub struct SessionPlan {
    /// Session instance `i` replays `sessions[i % len]`.
    pub sessions: Vec<Session>,
    pub params: BodyParams,
    pub think: ThinkTime,
    /// Seeds the exponential think times.
    pub seed: u64,
}
