//! Pre-staging: which images to copy where ahead of time.
//!
//! Each candidate is a service with a probability `p` of moving soon and its likely target (from
//! the placement function). Copying its image there ahead of time saves, if it moves, the
//! image transfer at switch time: expected benefit `p * image_bytes / B(source, target)` seconds.
//! Candidates for the same image and target are merged (benefits add). Targets that already
//! hold the image are skipped. The rest are taken greedily by benefit per byte (`sum p / B`),
//! ties by benefit, then smaller image, then image id and target id, while they fit in the
//! budget (bytes per planning period); a copy that does not fit is skipped and smaller ones may
//! still fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One service that may move and where it would likely go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PrestageCandidate {
    pub service: String,
    pub image: String,
    pub image_bytes: u64,
    /// Probability of moving within the planning horizon, in `[0, 1]`.
    pub probability: f64,
    /// The likely target.
    pub target: String,
    /// The target already holds the image.
    pub target_holds_image: bool,
    /// Bandwidth of the switch-time path (source to target), bytes per second.
    pub bandwidth_bytes_per_s: f64,
}

/// One image copy to make now.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PrestageCopy {
    pub image: String,
    pub to: String,
    pub bytes: u64,
    /// Expected switch-time seconds saved.
    pub benefit_s: f64,
    /// Benefit per byte copied.
    pub benefit_per_byte: f64,
    /// The services that would use it.
    pub services: Vec<String>,
}

/// Why a candidate copy was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrestageSkipReason {
    /// The target holds the image already.
    AlreadyHeld,
    /// Does not fit in what is left of the budget.
    OverBudget,
    /// Nothing to copy (zero size) or nothing to gain (zero probability).
    NoBenefit,
}

/// A copy not made.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PrestageSkip {
    pub image: String,
    pub to: String,
    pub bytes: u64,
    pub reason: PrestageSkipReason,
}

/// The pre-staging plan for one period.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PrestagePlan {
    pub budget_bytes: u64,
    pub used_bytes: u64,
    /// In the order chosen (best benefit per byte first).
    pub copies: Vec<PrestageCopy>,
    pub skipped: Vec<PrestageSkip>,
}

/// Chooses the copies within `budget_bytes`.
pub fn prestage_plan(candidates: &[PrestageCandidate], budget_bytes: u64) -> PrestagePlan {
    #[derive(Default)]
    struct Acc {
        bytes: u64,
        benefit: f64,
        held: bool,
        services: Vec<String>,
    }
    let mut merged: BTreeMap<(&str, &str), Acc> = BTreeMap::new();
    for c in candidates {
        let acc = merged.entry((&c.image, &c.target)).or_default();
        acc.bytes = acc.bytes.max(c.image_bytes);
        acc.held |= c.target_holds_image;
        let p = if c.probability.is_finite() {
            c.probability.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let bw = if c.bandwidth_bytes_per_s.is_finite() && c.bandwidth_bytes_per_s > 0.0 {
            c.bandwidth_bytes_per_s
        } else {
            f64::INFINITY
        };
        acc.benefit += p * c.image_bytes as f64 / bw;
        acc.services.push(c.service.clone());
    }
    let mut plan = PrestagePlan {
        budget_bytes,
        ..PrestagePlan::default()
    };
    let mut ranked = Vec::new();
    for ((image, to), mut acc) in merged {
        let reason = if acc.held {
            Some(PrestageSkipReason::AlreadyHeld)
        } else if acc.bytes == 0 || acc.benefit <= 0.0 || !acc.benefit.is_finite() {
            Some(PrestageSkipReason::NoBenefit)
        } else {
            None
        };
        if let Some(reason) = reason {
            plan.skipped.push(PrestageSkip {
                image: image.to_string(),
                to: to.to_string(),
                bytes: acc.bytes,
                reason,
            });
            continue;
        }
        acc.services.sort();
        acc.services.dedup();
        ranked.push(PrestageCopy {
            image: image.to_string(),
            to: to.to_string(),
            bytes: acc.bytes,
            benefit_s: acc.benefit,
            benefit_per_byte: acc.benefit / acc.bytes as f64,
            services: acc.services,
        });
    }
    ranked.sort_by(|a, b| {
        b.benefit_per_byte
            .total_cmp(&a.benefit_per_byte)
            .then_with(|| b.benefit_s.total_cmp(&a.benefit_s))
            .then_with(|| a.bytes.cmp(&b.bytes))
            .then_with(|| a.image.cmp(&b.image))
            .then_with(|| a.to.cmp(&b.to))
    });
    for copy in ranked {
        if plan.used_bytes.saturating_add(copy.bytes) <= budget_bytes {
            plan.used_bytes += copy.bytes;
            plan.copies.push(copy);
        } else {
            plan.skipped.push(PrestageSkip {
                image: copy.image,
                to: copy.to,
                bytes: copy.bytes,
                reason: PrestageSkipReason::OverBudget,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(svc: &str, img: &str, bytes: u64, p: f64, to: &str, bw: f64) -> PrestageCandidate {
        PrestageCandidate {
            service: svc.into(),
            image: img.into(),
            image_bytes: bytes,
            probability: p,
            target: to.into(),
            target_holds_image: false,
            bandwidth_bytes_per_s: bw,
        }
    }

    #[test]
    fn greedy_by_benefit_per_byte_within_budget() {
        let mut held = cand("h", "img-h", 10, 1.0, "t1", 1.0);
        held.target_holds_image = true;
        let cands = vec![
            // per byte: p / B
            cand("a", "img-a", 600, 0.9, "t1", 10.0), // 0.09
            cand("b", "img-b", 500, 0.5, "t2", 10.0), // 0.05
            cand("c", "img-c", 300, 0.2, "t1", 10.0), // 0.02
            cand("d", "img-d", 100, 0.1, "t2", 1.0),  // 0.1
            // same image and target as a: benefits add -> (0.9 + 0.1)/10 = 0.1
            cand("a2", "img-a", 600, 0.1, "t1", 10.0),
            held,
            cand("z", "img-z", 0, 1.0, "t1", 1.0),
        ];
        let plan = prestage_plan(&cands, 1000);
        let chosen: Vec<(&str, &str)> = plan
            .copies
            .iter()
            .map(|c| (c.image.as_str(), c.to.as_str()))
            .collect();
        // img-a and img-d tie at 0.1 per byte: img-a has the larger benefit (60 s vs 10 s);
        // then img-b does not fit (700 + 500 > 1000) but img-c does
        assert_eq!(
            chosen,
            vec![("img-a", "t1"), ("img-d", "t2"), ("img-c", "t1")]
        );
        assert_eq!(plan.used_bytes, 1000);
        assert_eq!(plan.copies[0].services, vec!["a", "a2"]);
        assert!((plan.copies[0].benefit_s - 60.0).abs() < 1e-9);
        let reasons: Vec<(&str, PrestageSkipReason)> = plan
            .skipped
            .iter()
            .map(|s| (s.image.as_str(), s.reason))
            .collect();
        assert!(reasons.contains(&("img-h", PrestageSkipReason::AlreadyHeld)));
        assert!(reasons.contains(&("img-z", PrestageSkipReason::NoBenefit)));
        assert!(reasons.contains(&("img-b", PrestageSkipReason::OverBudget)));
    }

    #[test]
    fn empty_and_zero_budget() {
        assert_eq!(prestage_plan(&[], 10).copies.len(), 0);
        let plan = prestage_plan(&[cand("a", "i", 5, 1.0, "t", 1.0)], 0);
        assert!(plan.copies.is_empty());
        assert_eq!(plan.skipped[0].reason, PrestageSkipReason::OverBudget);
    }
}
