//! Runs several policies on one scenario and renders the comparison as markdown.

use std::fmt::Write as _;

use super::engine::{self, Report};
use super::policy::SimPolicy;
use super::scenario::Scenario;

/// One policy's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub policy: String,
    pub report: Report,
    /// The policy's own notes on its decisions.
    pub notes: Option<String>,
}

/// Runs every policy on the same scenario.
pub fn compare(sc: &Scenario, policies: &mut [Box<dyn SimPolicy>]) -> Result<Vec<Outcome>, String> {
    policies
        .iter_mut()
        .map(|p| {
            let report = engine::run(sc, p.as_mut())?;
            Ok(Outcome {
                policy: p.name().to_owned(),
                report,
                notes: p.notes(),
            })
        })
        .collect()
}

/// The markdown table, then the ratio of `num`'s overload-seconds to `den`'s when both ran.
/// `bound`, when given, is the overload-seconds no placement avoids ([`super::bound`]): a row
/// of its own, and each policy's avoidable overload beside it.
pub fn markdown(outcomes: &[Outcome], num: &str, den: &str, bound: Option<f64>) -> String {
    let mut s = String::new();
    s.push_str(
        "| policy | overload-seconds | migrations | energy-over-tolerance s | unplaceable | \
         downtime s | restarts | pre-staged | refused |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for o in outcomes {
        let r = &o.report;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.0} | {} | {:.1} | {} | {} | {} |",
            o.policy,
            r.overload_seconds,
            r.migrations,
            r.energy_over_tolerance_seconds,
            r.unplaceable,
            r.downtime_seconds,
            r.restarts,
            r.prestaged,
            r.rejected
        );
    }
    let find = |name: &str| outcomes.iter().find(|o| o.policy == name);
    if let (Some(a), Some(b)) = (find(num), find(den)) {
        let (x, y) = (a.report.overload_seconds, b.report.overload_seconds);
        let ratio = if y > 0.0 {
            format!("{:.2}", x / y)
        } else if x > 0.0 {
            "inf".to_owned()
        } else {
            "n/a (both 0)".to_owned()
        };
        let _ = writeln!(
            s,
            "\n{num}/{den} overload-seconds: {ratio} ({x:.0} / {y:.0}); migrations {} vs {}",
            a.report.migrations, b.report.migrations
        );
    }
    if let Some(lb) = bound {
        let _ = writeln!(
            s,
            "\nlower bound (cluster demand above live capacity, any placement): {lb:.0} \
             overload-seconds; above it: {}",
            outcomes
                .iter()
                .map(|o| format!("{} {:.0}", o.policy, o.report.overload_seconds - lb))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for o in outcomes {
        if let Some(n) = &o.notes {
            let _ = writeln!(s, "\n{}: {n}", o.policy);
        }
    }
    s
}
