//! The guard rails between the plan's pre-staging copies and the pushes the leader orders:
//! nothing when the target holds the image already (gossip says so, or this leader's copy
//! landed moments ago and gossip has not caught up), `act = false`, the log's pause, a copy
//! of the same image to the same node in flight, a copy that failed moments ago, at most
//! `max_copies` copies at once in the cluster and `max_copies_per_node` to any one node, and
//! never more than `prestage_budget_bytes` of images in flight.
//!
//! The plan lists the same copies every sample while their services stay likely to move, so
//! the rails also remember each planned copy's last outcome: a decision that repeats the
//! last one is not recorded again ([`CopyRails::note`]).
//! Pure: the clock is a number the caller passes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Outcome;

/// The copy rails' settings (`[coordinator]`, `[policy] prestage_budget_bytes`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyRailsConfig {
    pub act: bool,
    pub max_copies: usize,
    pub max_copies_per_node: usize,
    /// Bytes of images in flight at most.
    pub budget_bytes: u64,
    /// A copy that landed is taken as held this long, until the target's gossip shows it.
    pub held_ms: u64,
    /// A copy that failed is not ordered again for this long.
    pub retry_ms: u64,
}

/// One pre-staging copy: an image, from a node that holds it to a node that may soon run a
/// service of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageCopy {
    pub image: String,
    pub from: String,
    pub to: String,
    pub bytes: u64,
    /// The services it is for.
    pub services: Vec<String>,
}

impl ImageCopy {
    fn key(&self) -> (String, String) {
        (self.image.clone(), self.to.clone())
    }
}

/// The rails' memory: this leader's copies in flight, those that landed or failed lately, and
/// each planned copy's last recorded outcome.
#[derive(Debug)]
pub struct CopyRails {
    cfg: CopyRailsConfig,
    running: BTreeMap<(String, String), ImageCopy>,
    landed_at_ms: BTreeMap<(String, String), u64>,
    failed_at_ms: BTreeMap<(String, String), u64>,
    last: BTreeMap<(String, String), Outcome>,
}

impl CopyRails {
    pub fn new(cfg: CopyRailsConfig) -> CopyRails {
        CopyRails {
            cfg,
            running: BTreeMap::new(),
            landed_at_ms: BTreeMap::new(),
            failed_at_ms: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// This leader's copies in flight.
    pub fn running(&self) -> impl Iterator<Item = &ImageCopy> {
        self.running.values()
    }

    /// Decides whether copy `c` starts now. `held`: the target's gossip lists the image;
    /// `paused`: the log's pause. A copy it lets start counts as running until
    /// [`CopyRails::finished`].
    pub fn admit(
        &mut self,
        c: &ImageCopy,
        held: bool,
        paused: bool,
        now_ms: u64,
    ) -> (Outcome, String) {
        let key = c.key();
        if held {
            return (Outcome::Held, format!("{} holds the image", c.to));
        }
        if let Some(held) = super::rails::held_back(self.cfg.act, paused, "moves and copies") {
            return held;
        }
        if self.running.contains_key(&key) {
            return (Outcome::InFlight, "this copy is in flight".into());
        }
        let since = |at: Option<&u64>| at.map(|at| now_ms.saturating_sub(*at));
        if let Some(s) = since(self.landed_at_ms.get(&key)).filter(|s| *s < self.cfg.held_ms) {
            return (
                Outcome::Held,
                format!(
                    "copied {:.0} s ago; {}'s gossip does not list it yet",
                    s as f64 / 1e3,
                    c.to
                ),
            );
        }
        if let Some(s) = since(self.failed_at_ms.get(&key)).filter(|s| *s < self.cfg.retry_ms) {
            return (
                Outcome::Cooldown,
                format!(
                    "failed {:.0} s ago; tried again {:.0} s after a failure",
                    s as f64 / 1e3,
                    self.cfg.retry_ms as f64 / 1e3
                ),
            );
        }
        if self.running.len() >= self.cfg.max_copies {
            return (
                Outcome::ClusterCap,
                format!(
                    "{} copies running, max_copies = {}",
                    self.running.len(),
                    self.cfg.max_copies
                ),
            );
        }
        let to_target = self.running.values().filter(|r| r.to == c.to).count();
        if to_target >= self.cfg.max_copies_per_node {
            return (
                Outcome::NodeCap,
                format!(
                    "{to_target} copies running to {}, max_copies_per_node = {}",
                    c.to, self.cfg.max_copies_per_node
                ),
            );
        }
        let in_flight: u64 = self.running.values().map(|r| r.bytes).sum();
        if in_flight.saturating_add(c.bytes) > self.cfg.budget_bytes {
            return (
                Outcome::Budget,
                format!(
                    "{in_flight} bytes in flight + {} > prestage_budget_bytes = {}",
                    c.bytes, self.cfg.budget_bytes
                ),
            );
        }
        self.running.insert(key, c.clone());
        (
            Outcome::Started,
            format!("{} pushes it to {}", c.from, c.to),
        )
    }

    /// The copy of `image` to `to` ended; `landed`: the target holds it now.
    pub fn finished(&mut self, image: &str, to: &str, landed: bool, now_ms: u64) {
        let key = (image.to_string(), to.to_string());
        self.running.remove(&key);
        if landed {
            self.failed_at_ms.remove(&key);
            self.landed_at_ms.insert(key.clone(), now_ms);
            self.last.insert(key, Outcome::Committed);
        } else {
            self.failed_at_ms.insert(key.clone(), now_ms);
            self.last.insert(key, Outcome::Failed);
        }
    }

    /// Whether a decision `outcome` about copy `c` is worth recording: a start always is; any
    /// other only when it differs from the last recorded for the copy, and never the echo of a
    /// start or a landing (in flight, held) or of a failure (its retry wait).
    pub fn note(&mut self, c: &ImageCopy, outcome: Outcome) -> bool {
        let last = self.last.insert(c.key(), outcome);
        match (last, outcome) {
            (_, Outcome::Started) => true,
            (Some(Outcome::Started), Outcome::InFlight | Outcome::Held)
            | (Some(Outcome::Committed), Outcome::Held)
            | (Some(Outcome::Failed), Outcome::Cooldown) => {
                // Keep the more telling outcome as the last one.
                self.last.insert(c.key(), last.unwrap_or(outcome));
                false
            }
            (Some(l), o) => l != o,
            (None, _) => true,
        }
    }

    /// Forgets what it recorded of copies no longer planned (so that one planned again is
    /// recorded again) and of landings and failures older than their waits.
    pub fn retain_planned<'a>(
        &mut self,
        planned: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) {
        let planned: std::collections::BTreeSet<(&str, &str)> = planned.into_iter().collect();
        let running = &self.running;
        self.last.retain(|(i, t), _| {
            planned.contains(&(i.as_str(), t.as_str()))
                || running.contains_key(&(i.clone(), t.clone()))
        });
        let (held, retry) = (self.cfg.held_ms, self.cfg.retry_ms);
        self.landed_at_ms
            .retain(|_, at| now_ms.saturating_sub(*at) < held);
        self.failed_at_ms
            .retain(|_, at| now_ms.saturating_sub(*at) < retry);
    }
}

/// The node to push `image` to `to` from: the node of the first of `services` (sorted) that
/// runs there (its store holds the image it runs), else the first live, unfenced node whose
/// gossip lists the image; never `to` itself.
pub fn holder(
    view: &crate::policy::ClusterView,
    image: &str,
    services: &[String],
    to: &str,
) -> Option<String> {
    let alive = |id: &str| view.nodes.iter().any(|n| n.id == id && n.alive);
    let mut services: Vec<&String> = services.iter().collect();
    services.sort();
    services
        .into_iter()
        .find_map(|s| {
            view.services
                .iter()
                .find(|v| &v.id == s && v.image == image && v.node != to && alive(&v.node))
                .map(|v| v.node.clone())
        })
        .or_else(|| {
            view.nodes
                .iter()
                .filter(|n| n.alive && !n.fenced && n.id != to && n.images.contains(image))
                .map(|n| n.id.clone())
                .min()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(image: &str, from: &str, to: &str, bytes: u64) -> ImageCopy {
        ImageCopy {
            image: image.into(),
            from: from.into(),
            to: to.into(),
            bytes,
            services: vec![format!("svc-{image}")],
        }
    }

    fn rails(act: bool, budget_bytes: u64) -> CopyRails {
        CopyRails::new(CopyRailsConfig {
            act,
            max_copies: 2,
            max_copies_per_node: 1,
            budget_bytes,
            held_ms: 30_000,
            retry_ms: 20_000,
        })
    }

    /// Every invariant the rails keep over what runs.
    fn check(r: &CopyRails, budget: u64) {
        let running: Vec<&ImageCopy> = r.running().collect();
        assert!(running.len() <= 2, "{running:?}");
        for c in &running {
            let to = running.iter().filter(|x| x.to == c.to).count();
            assert!(to <= 1, "{}: {running:?}", c.to);
        }
        let bytes: u64 = running.iter().map(|c| c.bytes).sum();
        assert!(bytes <= budget, "{bytes} > {budget}");
    }

    #[test]
    fn a_burst_of_copies_never_exceeds_the_caps_or_the_budget() {
        let budget = 1000;
        let mut r = rails(true, budget);
        let mut started = Vec::new();
        // Twelve images, each planned to three targets, in one sample.
        for i in 0..12 {
            for t in 0..3 {
                let c = copy(&format!("img{i}"), "n0", &format!("t{t}"), 300 + 50 * i);
                let (o, why) = r.admit(&c, false, false, 1000);
                if o == Outcome::Started {
                    started.push(c);
                } else {
                    assert!(
                        matches!(o, Outcome::ClusterCap | Outcome::NodeCap | Outcome::Budget),
                        "{o:?}: {why}"
                    );
                }
                check(&r, budget);
            }
        }
        assert_eq!(started.len(), 2, "{started:?}");
        // The same copy again is in flight, not started twice.
        let (o, _) = r.admit(&started[0], false, false, 1000);
        assert_eq!(o, Outcome::InFlight);
        // One ends; a big one that would take the bytes in flight over the budget waits.
        r.finished(&started[0].image, &started[0].to, true, 2000);
        let big = copy("big", "n0", "t2", 900);
        let (o, why) = r.admit(&big, false, false, 2000);
        assert_eq!(o, Outcome::Budget, "{why}");
        assert!(why.contains("prestage_budget_bytes = 1000"), "{why}");
        // A copy larger than the whole budget never starts.
        let mut fresh = rails(true, budget);
        assert_eq!(
            fresh
                .admit(&copy("huge", "n0", "t9", 1001), false, false, 0)
                .0,
            Outcome::Budget
        );
        assert_eq!(fresh.running().count(), 0);
    }

    #[test]
    fn held_images_watch_only_and_pause_start_nothing() {
        let c = copy("img", "n2", "n3", 100);
        // The target's gossip lists the image: nothing to copy, whatever else holds.
        for act in [true, false] {
            let (o, _) = rails(act, 1000).admit(&c, true, true, 0);
            assert_eq!(o, Outcome::Held);
        }
        let (o, why) = rails(false, 1000).admit(&c, false, false, 0);
        assert_eq!(o, Outcome::Observed);
        assert!(why.contains("act = false"), "{why}");
        let mut r = rails(true, 1000);
        assert_eq!(r.admit(&c, false, true, 0).0, Outcome::Paused);
        assert_eq!(r.running().count(), 0);
        // Started before the pause, a copy runs on; new ones wait.
        assert_eq!(r.admit(&c, false, false, 0).0, Outcome::Started);
        assert_eq!(
            r.admit(&copy("other", "n2", "n1", 10), false, true, 0).0,
            Outcome::Paused
        );
        assert_eq!(r.running().count(), 1);
    }

    #[test]
    fn a_landed_copy_is_not_ordered_again_and_a_failed_one_waits() {
        let c = copy("img", "n2", "n3", 100);
        let mut r = rails(true, 1000);
        assert_eq!(r.admit(&c, false, false, 0).0, Outcome::Started);
        r.finished("img", "n3", true, 5_000);
        // Gossip has not caught up: the plan lists it again, the rails know better.
        let (o, why) = r.admit(&c, false, false, 10_000);
        assert_eq!(o, Outcome::Held, "{why}");
        assert!(why.contains("copied 5 s ago"), "{why}");
        // Long after, with the image still not in the target's gossip, it is ordered again
        // (the push is then only the offer: the target has every chunk).
        assert_eq!(r.admit(&c, false, false, 40_000).0, Outcome::Started);
        r.finished("img", "n3", false, 41_000);
        assert_eq!(r.admit(&c, false, false, 50_000).0, Outcome::Cooldown);
        assert_eq!(r.admit(&c, false, false, 61_000).0, Outcome::Started);
    }

    #[test]
    fn the_copy_comes_from_the_services_node_else_any_live_holder() {
        use crate::policy::{ClusterView, NodeView, ServiceView};
        let node = |id: &str, alive: bool, images: &[&str]| NodeView {
            id: id.into(),
            alive,
            images: images.iter().map(|i| i.to_string()).collect(),
            ..NodeView::default()
        };
        let mut view = ClusterView {
            nodes: vec![
                node("n1", true, &["img"]),
                node("n2", true, &[]),
                node("n3", true, &[]),
                node("n4", false, &["img"]),
            ],
            services: vec![ServiceView {
                id: "kv".into(),
                node: "n2".into(),
                image: "img".into(),
                ..ServiceView::default()
            }],
            ..ClusterView::default()
        };
        let kv = ["kv".to_string()];
        // The service's own node, though its gossip (cut to fit) does not list the image.
        assert_eq!(holder(&view, "img", &kv, "n3").as_deref(), Some("n2"));
        // Not to itself: then a node whose gossip lists it.
        assert_eq!(holder(&view, "img", &kv, "n2").as_deref(), Some("n1"));
        view.nodes[0].alive = false;
        // A dead holder is no source.
        assert_eq!(holder(&view, "img", &kv, "n2"), None);
        assert_eq!(holder(&view, "other", &kv, "n3"), None);
    }

    #[test]
    fn a_copy_planned_every_sample_is_recorded_once_per_change() {
        let c = copy("img", "n2", "n3", 100);
        let mut r = rails(true, 1000);
        // Paused for three samples: one record.
        let paused: Vec<bool> = (0..3).map(|_| r.note(&c, Outcome::Paused)).collect();
        assert_eq!(paused, [true, false, false]);
        // Resumed: started (recorded), then in flight (not), then it lands (recorded by the
        // caller as committed), then held until gossip shows it (not).
        assert!(r.note(&c, Outcome::Started));
        assert!(!r.note(&c, Outcome::InFlight));
        r.finished("img", "n3", true, 0);
        assert!(!r.note(&c, Outcome::Held));
        // No longer planned (the target's gossip lists it), then planned again elsewhere.
        r.retain_planned([], 0);
        assert!(r.note(&c, Outcome::ClusterCap));
        assert!(!r.note(&c, Outcome::ClusterCap));
        assert!(r.note(&c, Outcome::NodeCap));
    }
}
