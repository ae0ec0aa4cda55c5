//! The machine's CPU over a stretch of a run, from `/proc/stat`: how busy its cores were
//! and how much of them the hypervisor gave to others (steal), so that a figure can be
//! read against what the machine had while it was measured.

use serde::{Deserialize, Serialize};

/// The machine's CPU time counters at one moment (all cores, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// The machine's CPU between two samples, as percentages of all its cores' time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
        CpuSample::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The counters in the `cpu` line of a `/proc/stat` text: user, nice, system, idle,
    /// iowait, irq, softirq, steal (guest time is already counted in user).
    fn parse(stat: &str) -> Option<CpuSample> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
            return None;
        };
        Some(CpuSample {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// What the machine did between `earlier` and this sample; `None` if no time passed.
    pub fn since(&self, earlier: &CpuSample) -> Option<MachineCpu> {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let total = busy + idle + steal;
        if total <= 0.0 {
            return None;
        }
        let pct = |part: f64| (1000.0 * part / total).round() / 10.0;
        Some(MachineCpu {
            busy_pct: pct(busy),
            idle_pct: pct(idle),
            steal_pct: pct(steal),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_is_read_and_compared_as_shares_of_all_cores() {
        let before = CpuSample::parse(
            "cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 50 0 25 400 5 0 2 10 0 0\nintr 1\n",
        )
        .unwrap();
        // 150 more busy (user 120, system 20, softirq 10), 40 idle, 10 stolen.
        let after = CpuSample::parse("cpu  220 0 70 840 10 0 15 30 0 0\n").unwrap();
        assert_eq!(
            after.since(&before),
            Some(MachineCpu {
                busy_pct: 75.0,
                idle_pct: 20.0,
                steal_pct: 5.0
            })
        );
        assert_eq!(after.since(&after), None, "no time passed");
    }

    #[test]
    fn a_text_without_a_whole_cpu_line_gives_nothing() {
        assert_eq!(CpuSample::parse("intr 1\n"), None);
        assert_eq!(CpuSample::parse("cpu  1 2 3\n"), None);
        assert_eq!(CpuSample::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn this_machine_can_be_sampled() {
        let Some(first) = CpuSample::now() else {
            return; // not Linux
        };
        // Busy for a moment, so that some ticks pass.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        let cpu = CpuSample::now().unwrap().since(&first);
        if let Some(cpu) = cpu {
            let sum = cpu.busy_pct + cpu.idle_pct + cpu.steal_pct;
            assert!((sum - 100.0).abs() < 0.5, "{cpu:?}");
        }
    }
}
