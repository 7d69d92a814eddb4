//! What the client itself used while a level ran: the process's CPU time
//! (`getrusage`), and in a container the cgroup's CPU throttling
//! (`cpu.stat`: `nr_throttled` and `throttled_usec` on cgroup v2,
//! `throttled_time` in ns on v1) and quota (`cpu.max`, or v1's
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`). When a level is client-bound
//! these say why: a throttled container, a process that used all its
//! cores, or a pacer that was not scheduled.
//!
//! Reading is best effort: a file that is missing or unreadable gives
//! `None`, never an error, so a level never fails for want of a cgroup.

use std::time::{Duration, Instant};

/// Where cgroup v2 and v1 mount the CPU controller.
const V2: &str = "/sys/fs/cgroup";
const V1: &str = "/sys/fs/cgroup/cpu";

/// The directories that may hold this process's CPU controller files, most
/// specific first: its own cgroup (from `/proc/self/cgroup`, for hosts
/// without a private cgroup namespace: systemd slices, some Kubernetes
/// nodes), then the mount roots (a container's own cgroup namespace).
fn cgroup_dirs() -> Vec<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = own_cgroup_dirs(&own);
    dirs.push(V2.into());
    dirs.push(V1.into());
    dirs
}

/// From `/proc/self/cgroup`: the v2 line `0::/path` and the v1 line whose
/// controllers include `cpu` (`4:cpu,cpuacct:/path`).
pub fn own_cgroup_dirs(proc_self_cgroup: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            continue; // the root, tried last anyway
        }
        if id == "0" && controllers.is_empty() {
            out.push(std::path::Path::new(V2).join(path));
        } else if controllers.split(',').any(|c| c == "cpu") {
            out.push(std::path::Path::new(V1).join(path));
        }
    }
    out
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub at: Instant,
    /// User + system CPU time of this process so far.
    pub cpu: Duration,
    pub throttle: Option<Throttle>,
}

/// The cgroup's throttling counters so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub nr_throttled: u64,
    pub throttled: Duration,
}

/// What one span between two snapshots used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Used {
    pub wall: Duration,
    pub cpu: Duration,
    /// `None` when no cgroup CPU controller is readable.
    pub throttle: Option<Throttle>,
}

impl Snapshot {
    pub fn now() -> Self {
        Snapshot {
            at: Instant::now(),
            cpu: process_cpu(),
            throttle: read_throttle(),
        }
    }

    /// What was used from `self` until `later`.
    pub fn until(&self, later: &Snapshot) -> Used {
        Used {
            wall: later.at.saturating_duration_since(self.at),
            cpu: later.cpu.saturating_sub(self.cpu),
            throttle: match (self.throttle, later.throttle) {
                (Some(a), Some(b)) => Some(Throttle {
                    nr_throttled: b.nr_throttled.saturating_sub(a.nr_throttled),
                    throttled: b.throttled.saturating_sub(a.throttled),
                }),
                _ => None,
            },
        }
    }
}

/// User + system CPU time of this process.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we own; RUSAGE_SELF is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn read_throttle() -> Option<Throttle> {
    cgroup_dirs().iter().find_map(|d| {
        std::fs::read_to_string(d.join("cpu.stat"))
            .ok()
            .and_then(|t| parse_cpu_stat(&t))
    })
}

/// `cpu.stat` of either version: v2 has `throttled_usec`, v1
/// `throttled_time` (ns). `None` when neither is there (v2's root cgroup
/// has no throttling lines).
pub fn parse_cpu_stat(text: &str) -> Option<Throttle> {
    let mut nr = None;
    let mut throttled = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "nr_throttled" => nr = Some(v),
            "throttled_usec" => throttled = Some(Duration::from_micros(v)),
            "throttled_time" => throttled = Some(Duration::from_nanos(v)),
            _ => {}
        }
    }
    Some(Throttle {
        nr_throttled: nr?,
        throttled: throttled?,
    })
}

/// The cores this process may use: the cgroup's CPU quota when one is
/// set, else the CPUs it may run on.
pub fn cores_available() -> f64 {
    let quota = cgroup_dirs().iter().find_map(|d| {
        if let Ok(t) = std::fs::read_to_string(d.join("cpu.max")) {
            return parse_cpu_max(&t);
        }
        let q = std::fs::read_to_string(d.join("cpu.cfs_quota_us")).ok()?;
        let p = std::fs::read_to_string(d.join("cpu.cfs_period_us")).ok()?;
        parse_cpu_max(&format!("{} {}", q.trim(), p.trim()))
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    quota.map_or(cpus, |q| q.min(cpus))
}

/// `cpu.max` (`"200000 100000"`, or `"max 100000"` for no quota) as cores;
/// v1's quota and period in the same shape (`-1` for no quota).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_of_both_versions() {
        let v2 = "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 50\nnr_throttled 7\nthrottled_usec 412000\n";
        assert_eq!(
            parse_cpu_stat(v2),
            Some(Throttle {
                nr_throttled: 7,
                throttled: Duration::from_millis(412)
            })
        );
        let v1 = "nr_periods 3\nnr_throttled 2\nthrottled_time 5000000\n";
        assert_eq!(
            parse_cpu_stat(v1).unwrap().throttled,
            Duration::from_millis(5)
        );
        // v2's root cgroup: usage only.
        assert_eq!(parse_cpu_stat("usage_usec 1\nuser_usec 1\n"), None);
    }

    #[test]
    fn cpu_max_and_v1_quota() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("-1 100000"), None);
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
    }

    #[test]
    fn own_cgroup_from_proc_self_cgroup() {
        let v1 = "9:name=systemd:/\n4:memory:/x\n2:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n";
        assert_eq!(
            own_cgroup_dirs(v1),
            vec![std::path::PathBuf::from(
                "/sys/fs/cgroup/cpu/kubepods/pod1/c1"
            )]
        );
        let v2 = "0::/system.slice/llmload.service\n";
        assert_eq!(
            own_cgroup_dirs(v2),
            vec![std::path::PathBuf::from(
                "/sys/fs/cgroup/system.slice/llmload.service"
            )]
        );
        assert!(own_cgroup_dirs("0::/\n1:cpu:/\n").is_empty());
    }

    #[test]
    fn busy_work_shows_as_cpu_time() {
        let a = Snapshot::now();
        // Spin until the process clock has moved: a relation, not a time.
        let mut x = 0u64;
        while Snapshot::now().cpu <= a.cpu + Duration::from_millis(20) {
            x = x.wrapping_add(1);
        }
        let used = a.until(&Snapshot::now());
        assert!(used.cpu >= Duration::from_millis(20), "{used:?} {x}");
        assert!(cores_available() > 0.0);
    }
}
