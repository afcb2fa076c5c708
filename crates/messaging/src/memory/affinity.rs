//! The lane choice of one consumer group. A message goes to the lane that holds the
//! earlier messages of its correlation id, as long as any of them is queued or in hand
//! there, so messages of one order keep their order; otherwise to an idle lane (the least
//! busy when none is idle), so one order's slow handler (a simulated delay, a commit
//! waiting for its group) never holds up another order that happened to hash alike.

use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// The lane hash of a correlation id: the key [`Affinity`] knows the id by, stable for
/// the life of the process. Distinct ids that share a hash merely share a lane while
/// both have messages pending; FxHash spreads ids well enough that this is rare (see the
/// tests). Not resistant to chosen collisions, which is fine for ids our own code picks.
pub(super) fn lane_hash(correlation_id: &str) -> u64 {
    FxBuildHasher.hash_one(correlation_id)
}

/// Which lane each correlation id with pending messages is on, and how busy each lane
/// is. Keys are lane hashes of correlation ids; an entry lives while its id has messages
/// queued or in hand in the group, so the map is bounded by the backlog, not by the
/// number of orders ever seen.
pub(super) struct Affinity {
    /// correlation hash → (its lane, its messages queued or in hand).
    keys: FxHashMap<u64, (usize, usize)>,
    /// Messages queued or in hand, per lane.
    load: Box<[usize]>,
    /// Where the search for an idle lane starts next, so idle lanes take turns.
    cursor: usize,
}

impl Affinity {
    /// No pending messages on any of `lanes` lanes.
    pub(super) fn new(lanes: usize) -> Self {
        Self {
            keys: FxHashMap::default(),
            load: vec![0; lanes].into_boxed_slice(),
            cursor: 0,
        }
    }

    /// The lane for one more message of `hash`: the lane its pending messages are on,
    /// else the first idle lane from the cursor, else the least busy one.
    pub(super) fn assign(&mut self, hash: u64) -> usize {
        if let Some((lane, count)) = self.keys.get_mut(&hash) {
            *count += 1;
            self.load[*lane] += 1;
            return *lane;
        }
        let lanes = self.load.len();
        let mut best = self.cursor % lanes;
        for step in 0..lanes {
            let lane = (self.cursor + step) % lanes;
            if self.load[lane] == 0 {
                best = lane;
                break;
            }
            if self.load[lane] < self.load[best] {
                best = lane;
            }
        }
        self.cursor = best + 1;
        self.load[best] += 1;
        self.keys.insert(hash, (best, 1));
        best
    }

    /// One message of `hash` is done with (handled, dead-lettered or never queued).
    pub(super) fn release(&mut self, hash: u64) {
        if let Some((lane, count)) = self.keys.get_mut(&hash) {
            self.load[*lane] = self.load[*lane].saturating_sub(1);
            *count -= 1;
            if *count == 0 {
                self.keys.remove(&hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn an_order_with_pending_messages_stays_on_its_lane() {
        let mut affinity = Affinity::new(4);
        let order = lane_hash("order-1");
        let lane = affinity.assign(order);
        // Other orders arrive meanwhile; the order's next messages follow its first.
        affinity.assign(lane_hash("order-2"));
        affinity.assign(lane_hash("order-3"));
        assert_eq!(affinity.assign(order), lane);
        affinity.release(order);
        assert_eq!(affinity.assign(order), lane);
    }

    #[test]
    fn orders_without_pending_messages_go_to_idle_lanes() {
        let mut affinity = Affinity::new(4);
        let lanes: Vec<usize> = (0..4)
            .map(|n| affinity.assign(lane_hash(&format!("order-{n}"))))
            .collect();
        let mut distinct = lanes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            4,
            "two orders share a lane while one is idle: {lanes:?}"
        );
    }

    #[test]
    fn with_every_lane_busy_a_new_order_takes_the_least_busy_one() {
        let mut affinity = Affinity::new(3);
        let busy = lane_hash("busy");
        let busy_lane = affinity.assign(busy);
        affinity.assign(busy);
        let others: Vec<usize> = ["a", "b"]
            .iter()
            .map(|id| affinity.assign(lane_hash(id)))
            .collect();
        assert!(!others.contains(&busy_lane));
        // Loads are now 2, 1, 1: a new order must not queue behind the busy lane.
        let lane = affinity.assign(lane_hash("new"));
        assert_ne!(lane, busy_lane);
    }

    #[test]
    fn a_released_order_is_forgotten_so_the_map_stays_bounded() {
        let mut affinity = Affinity::new(8);
        for n in 0..10_000 {
            let key = lane_hash(&format!("order-{n}"));
            affinity.assign(key);
            affinity.assign(key);
            affinity.release(key);
            affinity.release(key);
        }
        assert!(affinity.keys.is_empty());
        assert!(affinity.load.iter().all(|&n| n == 0));
    }

    /// Correlation ids as they come: short counters, and order ids (UUIDs v7, which
    /// share their leading timestamp digits, and v4).
    fn sample_ids() -> Vec<String> {
        let counters = (0..65_536).map(|n| format!("order-{n}"));
        let v7 = (0..65_536).map(|_| uuid::Uuid::now_v7().to_string());
        let v4 = (0..65_536).map(|_| uuid::Uuid::new_v4().to_string());
        counters.chain(v7).chain(v4).collect()
    }

    #[test]
    fn distinct_correlation_ids_get_distinct_lane_hashes() {
        let ids = sample_ids();
        let hashes: HashSet<u64> = ids.iter().map(|id| lane_hash(id)).collect();
        assert_eq!(hashes.len(), ids.len(), "two ids share a lane hash");
    }

    #[test]
    fn lane_hashes_spread_evenly_over_their_low_and_high_bits() {
        // 64 buckets by the low bits (where a hash table indexes) and by the top bits
        // (its tags): each should hold about 1/64 of the ids, whatever their form.
        let ids = sample_ids();
        let expected = ids.len() / 64;
        for (what, bucket) in [
            ("low", (|h: u64| (h & 63) as usize) as fn(u64) -> usize),
            ("high", |h: u64| (h >> 58) as usize),
        ] {
            let mut counts = [0usize; 64];
            for id in &ids {
                counts[bucket(lane_hash(id))] += 1;
            }
            // A quarter off is 14 standard deviations: a fair hash never fails this, one
            // that leaves these bits to a few input bytes does.
            let (min, max) = (counts.iter().min(), counts.iter().max());
            assert!(
                counts.iter().all(|&n| n.abs_diff(expected) < expected / 4),
                "{what} bits spread unevenly: min {min:?}, max {max:?}, expected {expected}"
            );
        }
    }
}
