//! Metric handles kept by their label values, so a hot path registers each series once
//! and from then on only bumps it. `metrics::counter!("name", "label" => value)` builds
//! its key (allocating the label values) and looks it up in the recorder's registry on
//! every call; on this service's hot paths (a few calls per request and per message)
//! that cost about a tenth of the HTTP throughput (BENCHMARKS.md, "telemetry"). Label
//! values stay bounded (routes, topics, statuses), so the maps do too. Keys are short,
//! so they are hashed with foldhash (seeded per process) rather than SipHash, which cost
//! more than the metric updates themselves.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use parking_lot::RwLock;

/// Values of type `V` (metric handles: cheap clones of shared atomics) by key `K`.
pub(crate) struct Handles<K, V> {
    map: RwLock<HashMap<K, V, foldhash::fast::RandomState>>,
}

impl<K, V> Default for Handles<K, V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
        }
    }
}

impl<K: Hash + Eq, V> Handles<K, V> {
    /// Calls `with` on the value of `key`, made by `make` (with the key to keep) the
    /// first time. The value is lent, not cloned: a metric handle is an `Arc`, and its
    /// clone and drop are two atomic operations on a line every core shares.
    pub(crate) fn with<Q, R>(
        &self,
        key: &Q,
        make: impl FnOnce() -> (K, V),
        with: impl FnOnce(&V) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.map.read().get(key) {
            return with(value);
        }
        let (key, value) = make();
        let mut map = self.map.write();
        with(map.entry(key).or_insert(value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::Handles;

    #[test]
    fn a_value_is_made_once_per_key() {
        let made = AtomicUsize::new(0);
        let handles: Handles<String, usize> = Handles::default();
        let make = |key: &str| {
            let key = key.to_owned();
            let made = &made;
            move || {
                let n = made.fetch_add(1, Ordering::SeqCst);
                (key, n)
            }
        };
        let get = |key: &str| handles.with(key, make(key), |n| *n);
        assert_eq!(get("a"), 0);
        assert_eq!(get("a"), 0);
        assert_eq!(get("b"), 1);
        assert_eq!(get("a"), 0);
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }
}
