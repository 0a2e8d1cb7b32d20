//! Bounded time series of the figures the sampler produces: one ring per (entity, metric),
//! evenly spaced at the sampling interval, with gaps kept as `None` so that `predict` can fill
//! them. Pure: no I/O.

use std::collections::{HashMap, VecDeque};

/// An evenly spaced series holding at most `capacity` samples (the oldest fall off).
#[derive(Debug, Clone)]
pub struct Series {
    capacity: usize,
    values: VecDeque<Option<f64>>,
    /// Sample index of the newest value (0 for the first ever pushed).
    last_index: Option<u64>,
}

impl Series {
    pub fn new(capacity: usize) -> Series {
        Series {
            capacity: capacity.max(1),
            values: VecDeque::new(),
            last_index: None,
        }
    }

    /// Records the value of sample `index`. Missing indices between the last one and this one
    /// become gaps; an index not newer than the last is ignored.
    pub fn push(&mut self, index: u64, value: f64) {
        if let Some(last) = self.last_index {
            if index <= last {
                return;
            }
            let gaps = (index - last - 1).min(self.capacity as u64);
            for _ in 0..gaps {
                self.push_raw(None);
            }
        }
        self.push_raw(value.is_finite().then_some(value));
        self.last_index = Some(index);
    }

    fn push_raw(&mut self, v: Option<f64>) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    /// Oldest first, with gaps.
    pub fn values(&self) -> Vec<Option<f64>> {
        self.values.iter().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn last(&self) -> Option<f64> {
        self.values.back().copied().flatten()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.last_index
    }
}

/// Series keyed by entity and metric, with entities dropped when they stop reporting.
#[derive(Debug, Clone)]
pub struct SeriesSet<K> {
    capacity: usize,
    series: HashMap<K, Series>,
}

impl<K: std::hash::Hash + Eq + Clone> SeriesSet<K> {
    pub fn new(capacity: usize) -> SeriesSet<K> {
        SeriesSet {
            capacity,
            series: HashMap::new(),
        }
    }

    pub fn push(&mut self, key: K, index: u64, value: f64) {
        let capacity = self.capacity;
        self.series
            .entry(key)
            .or_insert_with(|| Series::new(capacity))
            .push(index, value);
    }

    pub fn get(&self, key: &K) -> Option<&Series> {
        self.series.get(key)
    }

    /// Drops series whose newest sample is older than `index - max_age`.
    pub fn retain_recent(&mut self, index: u64, max_age: u64) {
        self.series.retain(|_, s| {
            s.last_index()
                .is_some_and(|l| index.saturating_sub(l) <= max_age)
        });
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.series.keys()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_gaps() {
        let mut s = Series::new(4);
        s.push(0, 1.0);
        s.push(1, 2.0);
        s.push(3, 4.0);
        assert_eq!(s.values(), vec![Some(1.0), Some(2.0), None, Some(4.0)]);
        s.push(4, f64::NAN);
        assert_eq!(s.values(), vec![Some(2.0), None, Some(4.0), None]);
        s.push(2, 9.0);
        assert_eq!(s.len(), 4, "an old index is ignored");
        s.push(100, 5.0);
        assert_eq!(
            s.values(),
            vec![None, None, None, Some(5.0)],
            "a long gap never exceeds capacity"
        );
        assert_eq!(s.last(), Some(5.0));
    }

    #[test]
    fn set_drops_stale_entities() {
        let mut set = SeriesSet::new(8);
        set.push("a", 0, 1.0);
        set.push("b", 5, 1.0);
        set.retain_recent(10, 6);
        assert!(set.get(&"a").is_none());
        assert!(set.get(&"b").is_some());
    }
}
