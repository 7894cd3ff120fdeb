//! Small helpers shared by the scenarios: environment knobs, percentiles, /proc readings.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use tempfile::TempDir;

/// `name` parsed as a `T` (underscores allowed as digit separators), or `default` when unset.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v} is not valid"))
        }
        _ => default,
    }
}

/// A comma-separated list, or `default`.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A fresh temporary directory under `AETHER_BENCH_DIR` (or the system's temp dir).
pub fn temp_dir() -> TempDir {
    match env::var_os("AETHER_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// The directory of the upstream driver scripts.
pub fn upstream_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/upstream").join(name)
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank; zero for none.
/// The number `s` starts with (a frame's stamp or sequence, read without parsing the JSON).
pub fn leading_u64(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat` (`"self"` for this one).
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    // Fields after the command name (which is in parentheses): utime is field 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises this process's open-file soft limit to its hard limit; returns the soft limit now.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads only the struct we pass, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            return wanted.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// Distinct items with their counts, in order of first appearance.
pub fn grouped(items: impl IntoIterator<Item = String>) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for item in items {
        match out.iter_mut().find(|(_, seen)| *seen == item) {
            Some((n, _)) => *n += 1,
            None => out.push((1, item)),
        }
    }
    out
}

/// Lines (newlines) in a file; 0 if it cannot be read.
pub fn count_lines(path: &Path) -> u64 {
    fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64).unwrap_or(0)
}

/// CPU seconds of each thread of a process: (thread id, name, seconds).
pub fn thread_cpu(pid: u32) -> Vec<(String, String, f64)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            let tid = t.file_name().to_string_lossy().into_owned();
            let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
            (tid.clone(), name, cpu_secs(&format!("{pid}/task/{tid}")))
        })
        .collect()
}

/// Per-thread CPU between two [`thread_cpu`] readings over `secs`, as "% of one core" for the
/// busiest threads: `"45 42 13 4"`.
pub fn thread_cpu_summary(before: &[(String, String, f64)], after: &[(String, String, f64)], secs: f64) -> String {
    let mut used: Vec<f64> = after
        .iter()
        .map(|(tid, _, s)| s - before.iter().find(|(t, _, _)| t == tid).map_or(0.0, |(_, _, b)| *b))
        .map(|d| 100.0 * d / secs)
        .filter(|p| *p >= 1.0)
        .collect();
    used.sort_by(|a, b| b.total_cmp(a));
    used.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(" ")
}

/// CPU seconds the whole machine has been busy (every core; user, nice, system, irq, softirq,
/// steal), from `/proc/stat`.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else { return f64::NAN };
    let Some(cpu) = stat.lines().next() else { return f64::NAN };
    let f: Vec<f64> = cpu.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().map(|&i| f.get(i).copied().unwrap_or(0.0)).sum::<f64>();
    busy / clock_ticks()
}

/// A `TcpExt` counter of the kernel (`/proc/net/netstat`), e.g. `ListenOverflows`: SYNs or
/// handshakes dropped because a listen queue was full. Machine-wide; 0 if it cannot be read.
pub fn tcp_ext(name: &str) -> u64 {
    let Ok(text) = fs::read_to_string("/proc/net/netstat") else { return 0 };
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// A `/proc/meminfo` field in KiB (`"Slab"`, `"MemAvailable"`); 0 if it cannot be read.
pub fn meminfo_kib(name: &str) -> u64 {
    let Ok(text) = fs::read_to_string("/proc/meminfo") else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
