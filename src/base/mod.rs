//! Small shared types and process plumbing that every stage uses:
//! durations, secrets, clocks, exit codes, URL redaction, console output,
//! logging, signals, a sub-millisecond timer, resource limits, the worker
//! count and the HTTP listener helper.

pub mod arrival;
pub mod clock;
pub mod console;
pub mod duration;
pub mod error;
pub mod limits;
pub mod logging;
pub mod redact;
pub mod secret;
pub mod serve;
pub mod signals;
pub mod timer;
pub mod timerfd;
pub mod usage;
pub mod workers;
