//! Which lane a message goes to: the lane that holds the earlier messages of its
//! correlation id while any of them is held there (so one flow is handled in order),
//! else an idle lane, else the least busy one (so flows that merely hash alike do not
//! queue behind each other). Entries live while their flow has messages held, so the
//! map is bounded by the in-flight bound.

use std::collections::HashMap;

/// Lane choice for one subscription.
pub(crate) struct Lanes {
    /// correlation id → (its lane, its messages held).
    flows: HashMap<String, (usize, usize)>,
    /// Messages held per lane.
    load: Vec<usize>,
    /// Where the search for an idle lane starts next, so idle lanes take turns.
    cursor: usize,
}

impl Lanes {
    /// `lanes` lanes (at least 1), all idle.
    pub(crate) fn new(lanes: usize) -> Self {
        Self {
            flows: HashMap::new(),
            load: vec![0; lanes.max(1)],
            cursor: 0,
        }
    }

    /// The lane for one more message of `flow`.
    pub(crate) fn assign(&mut self, flow: &str) -> usize {
        if let Some((lane, count)) = self.flows.get_mut(flow) {
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
        self.flows.insert(flow.to_owned(), (best, 1));
        best
    }

    /// One message of `flow` is no longer held.
    pub(crate) fn release(&mut self, flow: &str) {
        if let Some((lane, count)) = self.flows.get_mut(flow) {
            self.load[*lane] = self.load[*lane].saturating_sub(1);
            *count -= 1;
            if *count == 0 {
                self.flows.remove(flow);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_with_held_messages_stays_on_its_lane() {
        let mut lanes = Lanes::new(4);
        let first = lanes.assign("order-1");
        lanes.assign("order-2");
        assert_eq!(lanes.assign("order-1"), first);
        lanes.release("order-1");
        assert_eq!(lanes.assign("order-1"), first);
    }

    #[test]
    fn new_flows_take_idle_lanes_then_the_least_busy() {
        let mut lanes = Lanes::new(3);
        let busy = lanes.assign("busy");
        lanes.assign("busy");
        let others = [lanes.assign("a"), lanes.assign("b")];
        assert!(!others.contains(&busy));
        assert_ne!(lanes.assign("new"), busy);
    }

    #[test]
    fn released_flows_are_forgotten() {
        let mut lanes = Lanes::new(2);
        for n in 0..1_000 {
            let flow = format!("order-{n}");
            lanes.assign(&flow);
            lanes.release(&flow);
        }
        assert!(lanes.flows.is_empty());
        assert!(lanes.load.iter().all(|&n| n == 0));
    }
}
