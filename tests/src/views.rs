//! How far something has spread over a set of gossip nodes: the fraction of their views for
//! which a condition holds, and the times it took to reach 99% and 100%. Shared by the gossip
//! benchmarks, on real time (`godwit-bench-gossip`) and on tokio's paused clock
//! (`godwit-bench-mesh`): both read `tokio::time`.

use std::time::Duration;

use godwit::gossip::Cluster;
use tokio::time::Instant;

/// How often the views are looked at.
const POLL: Duration = Duration::from_millis(10);

/// The fraction of the running nodes, other than `skip`, for which `cond` holds.
pub fn fraction(nodes: &[Option<Cluster>], skip: usize, cond: impl Fn(&Cluster) -> bool) -> f64 {
    let (mut yes, mut all) = (0usize, 0usize);
    for (i, n) in nodes.iter().enumerate() {
        if i == skip {
            continue;
        }
        if let Some(n) = n {
            all += 1;
            yes += usize::from(cond(n));
        }
    }
    yes as f64 / all.max(1) as f64
}

/// Seconds until `cond` holds on 99% and on 100% of the nodes other than `skip` (`None` past
/// `deadline`). `progress` gets the fraction and the time since the start at every look.
pub async fn spread(
    nodes: &[Option<Cluster>],
    skip: usize,
    deadline: Duration,
    cond: impl Fn(&Cluster) -> bool,
    mut progress: impl FnMut(f64, Duration),
) -> (Option<f64>, Option<f64>) {
    let start = Instant::now();
    let mut p99 = None;
    while start.elapsed() <= deadline {
        let f = fraction(nodes, skip, &cond);
        progress(f, start.elapsed());
        if f >= 0.99 && p99.is_none() {
            p99 = Some(start.elapsed().as_secs_f64());
        }
        if f >= 1.0 {
            return (p99, Some(start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(POLL).await;
    }
    (p99, None)
}
