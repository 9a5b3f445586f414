//! This host's load, as the worker reports it in heartbeats and task requests: CPU use from
//! `/proc/stat` deltas and free memory from `/proc/meminfo` (MemAvailable), the figures SSIS
//! compares with TaskRequestMaxCPU and TaskRequestMinMemory.

use std::time::{Duration, Instant};

/// Readings closer together than this reuse the last figure: a delta over a few jiffies is noise.
const MIN_SAMPLE_GAP: Duration = Duration::from_millis(200);

/// CPU use between successive readings of `/proc/stat`.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(CpuTimes, Instant)>,
    percent: f64,
}

/// Cumulative jiffies from the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuSampler {
    /// CPU use in percent since the previous call (0 on the first call or without /proc).
    pub fn sample(&mut self) -> f64 {
        let now = Instant::now();
        if let Some((_, at)) = self.last {
            if now.duration_since(at) < MIN_SAMPLE_GAP {
                return self.percent;
            }
        }
        let Some(times) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_cpu_times(&text))
        else {
            return self.percent;
        };
        if let Some((last, _)) = self.last {
            self.percent = cpu_percent(last, times);
        }
        self.last = Some((times, now));
        self.percent
    }
}

/// The aggregate `cpu` line of /proc/stat: busy = everything but idle and iowait. guest and
/// guest_nice are already counted in user and nice, so they are left out.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy).min(total);
    busy as f64 * 100.0 / total as f64
}

/// MemAvailable in MiB; `u64::MAX` when unknown, so an unreadable /proc never stops dispatch.
pub fn free_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_mem_available_mb(&text))
        .unwrap_or(u64::MAX)
}

pub fn parse_mem_available_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_proc_stat() {
        let a = parse_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        let b = parse_cpu_times("cpu  200 0 200 1400 200 0 0 0 0 0\n").unwrap();
        assert!((cpu_percent(a, b) - 20.0).abs() < 1e-9);
        assert_eq!(cpu_percent(a, a), 0.0);
        assert!(parse_cpu_times("intr 1 2 3").is_none());
    }

    #[test]
    fn memory_from_meminfo() {
        let text = "MemTotal:  8000000 kB\nMemFree: 100 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(parse_mem_available_mb(text), Some(2048));
        assert_eq!(parse_mem_available_mb("MemTotal: 1 kB"), None);
        // On this Linux host both readings work.
        assert!(free_memory_mb() < u64::MAX);
        let mut sampler = CpuSampler::default();
        assert_eq!(sampler.sample(), 0.0);
        std::thread::sleep(Duration::from_millis(250));
        let percent = sampler.sample();
        assert!((0.0..=100.0).contains(&percent), "{percent}");
    }
}
