//! Resident memory of the honest processes, sampled from `/proc/PID/status` during a run, and
//! the CPU time they spent, from `/proc/PID/stat`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often every watched process is sampled.
const EVERY: Duration = Duration::from_millis(100);

/// The resident memory of `pid` in bytes (`VmRSS`), if the process exists.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

/// User plus system CPU seconds `pid` has spent (`None`: this process), if it exists.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    parse_cpu(&std::fs::read_to_string(path).ok()?)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The fields after the command name (which may hold spaces and parentheses) start after
    // the last ')'; utime and stime are fields 14 and 15 of the line, 12 and 13 after it.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples every watched process on a background thread and keeps each name's peak.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// Name to current PID (a restarted process keeps its name). Locked briefly, never across
    /// a blocking call.
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    peaks: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling (nothing is watched yet).
    pub(crate) fn start() -> Self {
        let pids: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let peaks: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pids, peaks, stop) = (pids.clone(), peaks.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now: Vec<(String, u32)> = lock(&pids).clone().into_iter().collect();
                    for (name, pid) in now {
                        if let Some(r) = rss(pid) {
                            let mut p = lock(&peaks);
                            let peak = p.entry(name).or_insert(0);
                            *peak = (*peak).max(r);
                        }
                    }
                    std::thread::sleep(EVERY);
                }
            })
        };
        Self { pids, peaks, stop, thread: Some(thread) }
    }

    /// Watches process `pid` as `name` (replacing an earlier process of that name).
    pub(crate) fn watch(&self, name: &str, pid: u32) {
        lock(&self.pids).insert(name.to_string(), pid);
    }

    /// Stops sampling; the peak resident memory of each watched name, in bytes.
    pub(crate) fn finish(mut self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock(&self.peaks).clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        assert_eq!(parse_cpu("42 (x) S 1"), None, "a short line is not read as zero");
        assert!(cpu_seconds(None).is_some_and(|s| s >= 0.0), "this process's own");
    }

    #[test]
    fn reads_vmrss_in_bytes() {
        let status = "Name:\tshoal\nVmPeak:\t  9000 kB\nVmRSS:\t   11264 kB\nThreads:\t4\n";
        assert_eq!(parse_vmrss(status), Some(11264 * 1024));
        assert_eq!(parse_vmrss("Name:\tzombie\n"), None);
    }

    #[test]
    fn samples_this_process() {
        assert!(rss(std::process::id()).is_some_and(|r| r > 0));
        let s = Sampler::start();
        s.watch("me", std::process::id());
        while lock(&s.peaks).is_empty() {
            std::thread::yield_now();
        }
        let peaks = s.finish();
        assert!(peaks["me"] > 0);
    }
}
