//! Ways of choosing a server: each a small type behind the `Strategy` trait, chosen at
//! start by name.

use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A live server as a strategy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Server name.
    pub name: String,
    /// Client address.
    pub addr: String,
    /// Clients at the last heartbeat plus those assigned since.
    pub clients: f64,
    /// The server's reported load figure plus assignments since the last heartbeat.
    pub load: f64,
}

/// Picks one of the candidates (never called with an empty slice).
pub trait Strategy: Send + Sync {
    /// The strategy's name, as given to `--strategy`.
    fn name(&self) -> &'static str;
    /// Index of the chosen candidate.
    fn pick(&self, candidates: &[Candidate]) -> usize;
}

/// Names accepted by [`by_name`].
pub const STRATEGIES: &[&str] = &[
    "round-robin",
    "least-connections",
    "random",
    "power-of-two",
    "weighted",
];

/// The strategy called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Strategy>> {
    Some(match name {
        "round-robin" => Box::new(RoundRobin::default()),
        "least-connections" => Box::new(LeastConnections),
        "random" => Box::new(Random),
        "power-of-two" => Box::new(PowerOfTwo),
        "weighted" => Box::new(Weighted),
        _ => return None,
    })
}

/// Each server in turn (by name order).
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn pick(&self, candidates: &[Candidate]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()
    }
}

/// The server with the fewest clients (ties: the first by name).
pub struct LeastConnections;

impl Strategy for LeastConnections {
    fn name(&self) -> &'static str {
        "least-connections"
    }
    fn pick(&self, candidates: &[Candidate]) -> usize {
        let mut best = 0;
        for (i, c) in candidates.iter().enumerate() {
            if c.clients < candidates[best].clients {
                best = i;
            }
        }
        best
    }
}

/// Uniformly at random.
pub struct Random;

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }
    fn pick(&self, candidates: &[Candidate]) -> usize {
        rand::thread_rng().gen_range(0..candidates.len())
    }
}

/// The less loaded of two servers drawn at random.
pub struct PowerOfTwo;

impl Strategy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power-of-two"
    }
    fn pick(&self, candidates: &[Candidate]) -> usize {
        let n = candidates.len();
        if n == 1 {
            return 0;
        }
        // Two different servers, so a loaded one is never compared with itself.
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..n);
        let b = (a + 1 + rng.gen_range(0..n - 1)) % n;
        if candidates[b].load < candidates[a].load {
            b
        } else {
            a
        }
    }
}

/// At random, with probability proportional to the inverse of each server's load
/// (seed 004's 1/L weighting).
pub struct Weighted;

impl Strategy for Weighted {
    fn name(&self) -> &'static str {
        "weighted"
    }
    fn pick(&self, candidates: &[Candidate]) -> usize {
        let weights: Vec<f64> = candidates
            .iter()
            .map(|c| 1.0 / (1.0 + c.load.max(0.0)))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut x = rand::thread_rng().gen_range(0.0..total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        candidates.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(loads: &[f64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &l)| Candidate {
                name: format!("server-{i}"),
                addr: String::new(),
                clients: l,
                load: l,
            })
            .collect()
    }

    #[test]
    fn every_name_resolves() {
        for name in STRATEGIES {
            assert_eq!(by_name(name).unwrap().name(), *name);
        }
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn round_robin_cycles() {
        let s = RoundRobin::default();
        let c = servers(&[0.0, 0.0, 0.0]);
        let picks: Vec<usize> = (0..6).map(|_| s.pick(&c)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_connections_takes_the_emptiest() {
        assert_eq!(LeastConnections.pick(&servers(&[5.0, 2.0, 9.0])), 1);
    }

    #[test]
    fn weighted_and_power_of_two_avoid_the_loaded_server() {
        let c = servers(&[0.0, 0.0, 1000.0]);
        let mut hits = [0usize; 3];
        for _ in 0..3000 {
            hits[Weighted.pick(&c)] += 1;
        }
        assert!(
            hits[2] < 30,
            "weighted picked the loaded server {} times",
            hits[2]
        );
        let mut hits = [0usize; 3];
        for _ in 0..3000 {
            hits[PowerOfTwo.pick(&c)] += 1;
        }
        // Only a draw of the loaded server twice picks it: about 1 in 9.
        assert!(
            hits[2] < 600,
            "power-of-two picked the loaded server {} times",
            hits[2]
        );
    }
}
