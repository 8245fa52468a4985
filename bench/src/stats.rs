//! Latency samples and their summary.

use serde::{Deserialize, Serialize};

/// Summary of a set of latency samples, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises samples given in microseconds.
pub fn summarize_us(samples: &[u64]) -> Summary {
    let mut v: Vec<f64> = samples.iter().map(|&u| u as f64 / 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Summary {
        n,
        p50_ms: pct(&v, 50.0),
        p99_ms: pct(&v, 99.0),
        max_ms: v.last().copied().unwrap_or(0.0),
        mean_ms: if n == 0 {
            0.0
        } else {
            v.iter().sum::<f64>() / n as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = summarize_us(&(1..=100).map(|i| i * 1000).collect::<Vec<_>>());
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(summarize_us(&[]).n, 0);
    }
}
