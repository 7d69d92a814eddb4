//! Console output that never takes the run down with it.
//!
//! `println!` panics when stdout is gone (a killed `tee`, a dead CI log
//! collector, a dropped ssh session), and a panic in the wrong task loses
//! every finished level or hangs the drain. These macros write the same
//! text, ignore a failed write, and stop trying after the first one: the
//! run keeps measuring and writes its results directory all the same.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static OUT_GONE: AtomicBool = AtomicBool::new(false);
static ERR_GONE: AtomicBool = AtomicBool::new(false);

/// Write to stdout; on failure, remember and stay quiet from then on.
pub fn out(args: std::fmt::Arguments<'_>) {
    write_to(&OUT_GONE, &mut std::io::stdout().lock(), args);
}

/// Write to stderr; on failure, remember and stay quiet from then on.
pub fn err(args: std::fmt::Arguments<'_>) {
    write_to(&ERR_GONE, &mut std::io::stderr().lock(), args);
}

fn write_to(gone: &AtomicBool, w: &mut dyn Write, args: std::fmt::Arguments<'_>) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if w.write_fmt(args).and_then(|()| w.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout has failed (for tests and for callers that would
/// otherwise build large reports for nobody).
pub fn stdout_gone() -> bool {
    OUT_GONE.load(Ordering::Relaxed)
}

/// `print!` that never panics.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::base::console::out(format_args!($($t)*)) };
}

/// `println!` that never panics.
#[macro_export]
macro_rules! outln {
    () => { $crate::base::console::out(format_args!("\n")) };
    ($($t:tt)*) => { $crate::base::console::out(format_args!("{}\n", format_args!($($t)*))) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    () => { $crate::base::console::err(format_args!("\n")) };
    ($($t:tt)*) => { $crate::base::console::err(format_args!("{}\n", format_args!($($t)*))) };
}
