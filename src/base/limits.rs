//! Raise the open-file limit: an open-loop client at thousands of
//! requests/s against a slow endpoint holds a socket per request.

pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, writable struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Give freed heap back to the OS every `every`.
///
/// glibc keeps freed memory in its arenas: after a burst (a stall that
/// queued thousands of requests, a pool that grew to hundreds of
/// connections) RSS would stay at the burst's high-water mark for the
/// life of a daemon. `malloc_trim` returns whole free pages; on a heap of
/// a few tens of MB it takes well under a millisecond, on its own thread.
pub fn spawn_memory_trimmer(every: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let _ = std::thread::Builder::new()
            .name("llmload-trim".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    // SAFETY: malloc_trim only releases free memory; it is
                    // thread-safe in glibc.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
