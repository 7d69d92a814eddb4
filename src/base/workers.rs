//! How many runtime worker threads the process runs: `--workers N` (or
//! `LLMLOAD_WORKERS`), else the cores it may use.
//!
//! The default counts what the kernel lets this process use, not what
//! the machine has: a pod limited to 2 CPUs on a 64-core node gets 2
//! workers (std reads the cgroup quota and the affinity mask), because
//! more threads than CPU time only adds context switches to every request.

use std::sync::OnceLock;

/// The most workers accepted: beyond this a typo, not a machine.
pub const MAX_WORKERS: usize = 1024;

static WORKERS: OnceLock<usize> = OnceLock::new();

/// The cores available to this process (cgroup quota and affinity
/// included), at least 1.
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Fix the process's worker count (once, before the runtime starts);
/// returns it.
pub fn init(asked: Option<usize>) -> usize {
    *WORKERS.get_or_init(|| asked.unwrap_or_else(available))
}

/// The worker count set by [`init`] (or the default when none was).
pub fn get() -> usize {
    *WORKERS.get_or_init(available)
}

/// `--workers`: a whole number from 1 to [`MAX_WORKERS`].
pub fn parse(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of workers"))?;
    if n == 0 || n > MAX_WORKERS {
        return Err(format!("{n} workers: give 1 to {MAX_WORKERS}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_one_to_the_cap() {
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(parse(" 8 "), Ok(8));
        assert!(parse("0").unwrap_err().contains("1 to 1024"));
        assert!(parse("1025").is_err());
        assert!(parse("two").unwrap_err().contains("'two'"));
        assert!(available() >= 1);
    }
}
