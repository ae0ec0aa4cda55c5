//! The machine's CPU over a stretch of a run, from `/proc/stat`: how busy its cores were
//! and how much of them the hypervisor gave to others (steal), so that a figure can be
//! read against what the machine had while it was measured.
//!
//! Busy is what is left of the wall-clock time of all cores once idle and stolen time
//! are taken out. `/proc/stat` also counts busy time, but by sampling at each timer tick,
//! and on a tickless kernel (this one: `NO_HZ_IDLE`) a light, regular load can fall
//! between the ticks: the relay at 2,500 messages/s read as 0.2% busy by ticks, 22% by
//! the kernel's exact task accounting (`cpuacct.usage`), and 23% as here. Idle time is
//! measured, not sampled, once the tick stops.

use serde::Serialize;
use std::time::{Duration, Instant};

/// The machine's idle and stolen CPU time at one moment (all cores, clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    idle: u64,
    steal: u64,
    /// Cores counted in `/proc/stat` (`cpuN` lines).
    cpus: u32,
    at: Instant,
}

/// The machine's CPU between two samples, as percentages of all its cores' time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MachineCpu {
    /// Running anything (user, system, interrupts): ours, PostgreSQL's, anyone's.
    pub busy_pct: f64,
    /// Idle or waiting for I/O.
    pub idle_pct: f64,
    /// Taken by the hypervisor for other machines.
    pub steal_pct: f64,
}

impl CpuSample {
    /// The counters now; `None` where `/proc/stat` cannot be read (not Linux).
    pub fn now() -> Option<CpuSample> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        CpuSample::parse(&stat, Instant::now())
    }

    /// The counters of a `/proc/stat` text read at `at`: idle and iowait, and steal, from
    /// its `cpu` line (user, nice, system, idle, iowait, irq, softirq, steal...), and the
    /// number of `cpuN` lines.
    fn parse(stat: &str, at: Instant) -> Option<CpuSample> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [_user, _nice, _system, idle, iowait, _irq, _softirq, steal, ..] = ticks[..] else {
            return None;
        };
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Some(CpuSample {
            idle: idle + iowait,
            steal,
            cpus: u32::try_from(cpus).ok().filter(|&n| n > 0)?,
            at,
        })
    }

    /// What the machine did between `earlier` and this sample; `None` if no time passed.
    pub fn since(&self, earlier: &CpuSample) -> Option<MachineCpu> {
        self.since_with(earlier, clock_ticks_per_second())
    }

    fn since_with(&self, earlier: &CpuSample, ticks_per_second: f64) -> Option<MachineCpu> {
        let elapsed = self.at.checked_duration_since(earlier.at)?;
        if elapsed < Duration::from_millis(10) {
            return None;
        }
        let total = elapsed.as_secs_f64() * ticks_per_second * f64::from(self.cpus);
        let share = |ticks: u64| (100.0 * ticks as f64 / total).clamp(0.0, 100.0);
        let idle = share(self.idle.saturating_sub(earlier.idle));
        let steal = share(self.steal.saturating_sub(earlier.steal)).min(100.0 - idle);
        let round = |pct: f64| (10.0 * pct).round() / 10.0;
        Some(MachineCpu {
            busy_pct: round(100.0 - idle - steal),
            idle_pct: round(idle),
            steal_pct: round(steal),
        })
    }
}

/// The unit of `/proc/stat` (`USER_HZ`, 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(busy_pct: f64, idle_pct: f64, steal_pct: f64) -> Option<MachineCpu> {
        Some(MachineCpu {
            busy_pct,
            idle_pct,
            steal_pct,
        })
    }

    const BEFORE: &str = "cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 50 0 25 400 5 0 2 10 0 0\n\
                          cpu1 50 0 25 400 5 0 3 10 0 0\nintr 1\n";

    #[test]
    fn busy_is_the_wall_clock_time_of_all_cores_less_idle_and_stolen_time() {
        let t0 = Instant::now();
        let before = CpuSample::parse(BEFORE, t0).unwrap();
        assert_eq!(before.cpus, 2);
        // Two cores for 2 s at 100 ticks a second: 400 ticks. 80 more idle (70 idle,
        // 10 iowait), 20 more stolen; the busy counters, sampled, are not used.
        let after = CpuSample::parse(
            "cpu  999 0 999 870 20 0 999 40 0 0\ncpu0 1 1 1 1 1 1 1 1\ncpu1 1 1 1 1 1 1 1 1\n",
            t0 + Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(after.since_with(&before, 100.0), cpu(75.0, 20.0, 5.0));
        assert_eq!(before.since_with(&before, 100.0), None, "no time passed");
        assert_eq!(before.since_with(&after, 100.0), None, "backwards");
    }

    #[test]
    fn shares_stay_within_all_of_the_time() {
        let t0 = Instant::now();
        let before = CpuSample::parse(BEFORE, t0).unwrap();
        // More idle ticks than the wall clock had (counters are not exact): all idle.
        let after = CpuSample::parse(
            BEFORE.replacen(" 800 ", " 1300 ", 1).as_str(),
            t0 + Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(after.since_with(&before, 100.0), cpu(0.0, 100.0, 0.0));
    }

    #[test]
    fn a_text_without_a_whole_cpu_line_or_any_core_gives_nothing() {
        let now = Instant::now();
        assert_eq!(CpuSample::parse("intr 1\n", now), None);
        assert_eq!(CpuSample::parse("cpu  1 2 3\ncpu0 1 2 3\n", now), None);
        assert_eq!(
            CpuSample::parse("cpu  1 2 x 4 5 6 7 8\ncpu0 1\n", now),
            None
        );
        assert_eq!(
            CpuSample::parse("cpu  1 2 3 4 5 6 7 8\n", now),
            None,
            "no core"
        );
    }

    #[test]
    fn this_machine_busy_for_a_moment_reads_as_busy() {
        let Some(first) = CpuSample::now() else {
            return; // not Linux
        };
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let cpu = CpuSample::now().unwrap().since(&first).unwrap();
        let sum = cpu.busy_pct + cpu.idle_pct + cpu.steal_pct;
        assert!((sum - 100.0).abs() < 0.5, "{cpu:?}");
        // One of its cores spun the whole time (unless the hypervisor took it).
        let one_core = 100.0 / f64::from(first.cpus);
        assert!(cpu.busy_pct + cpu.steal_pct >= one_core * 0.5, "{cpu:?}");
    }
}
