//! Where and when requests go: the [`target::Target`] and its
//! settings, the arrival schedules, and the prompts a run sends to a
//! target (read or generated, then counted).

pub mod load;
pub mod profile;
pub mod prompts;
pub mod replay;
pub mod schedule;
pub mod send_quantum;
pub mod sessions;
pub mod target;
pub mod think;
