//! Just enough of the OpenMetrics / Prometheus text format to read samples back: names, labels
//! (with escapes), the value; timestamps and exemplars are skipped.

use anyhow::{anyhow, bail, Result};

/// One sample line, e.g. `godwit_bpf_program_runs_total{program="sched_switch"} 42`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample of an exposition; comment lines (`# TYPE`, `# EOF`, ...) are skipped.
pub(crate) fn parse(text: &str) -> Result<Vec<Sample>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| parse_line(l).map_err(|e| anyhow!("line {}: {e}: {l:?}", i + 1)))
        .collect()
}

/// The value of the sample named `name` whose labels include all of `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
}

/// The sum over all samples named `name` (e.g. one counter over all its label values), or
/// `None` when there is no such sample.
pub(crate) fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| anyhow!("no value"))?;
    let value = parse_value(value)?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (the opening brace already consumed); returns the labels and the
/// text after the closing brace.
fn parse_labels(mut s: &str) -> Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or_else(|| anyhow!("label without '='"))?;
        let key = s[..eq].trim().to_owned();
        let after = s[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            bail!("label value not quoted");
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => bail!("dangling escape"),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| anyhow!("unterminated label value"))?;
        labels.push((key, value));
        s = after[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn parse_value(v: &str) -> Result<f64> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| anyhow!("bad value {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP godwit_bpf_program_runs Times each BPF program ran.
# TYPE godwit_bpf_program_runs counter
godwit_bpf_program_runs_total{program="sched_switch"} 123456
godwit_bpf_program_runs_total{program="writeback_dirty_folio"} 7
# TYPE godwit_bpf_program_run_time_seconds counter
godwit_bpf_program_run_time_seconds_total{program="sched_switch"} 0.0123
godwit_bpf_program_run_time_seconds_total{program="writeback_dirty_folio"} 1.5e-6
godwit_bpf_program_run_time_seconds_created{program="sched_switch"} 1.7e9
process_cpu_seconds_total 1.25 1700000000.000
process_resident_memory_bytes{} 1.4e7
weird{path="a \"quoted\" \\ path, with comma",x="}"} 3 # {trace_id="abc"} 1.0 1700000000
http_requests_total{code="200",} +Inf
# EOF
"#;

    #[test]
    fn parses_counters_gauges_and_odd_labels() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(
            value(
                &s,
                "godwit_bpf_program_runs_total",
                &[("program", "sched_switch")]
            ),
            Some(123456.0)
        );
        assert_eq!(value(&s, "process_cpu_seconds_total", &[]), Some(1.25));
        assert_eq!(value(&s, "process_resident_memory_bytes", &[]), Some(1.4e7));
        let weird = s.iter().find(|x| x.name == "weird").unwrap();
        assert_eq!(
            weird.label("path"),
            Some(r#"a "quoted" \ path, with comma"#)
        );
        assert_eq!(weird.label("x"), Some("}"));
        assert_eq!(weird.value, 3.0);
        assert_eq!(
            value(&s, "http_requests_total", &[("code", "200")]),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn sums_over_labels_and_misses_are_none() {
        let s = parse(TEXT).unwrap();
        let total = sum(&s, "godwit_bpf_program_run_time_seconds_total").unwrap();
        assert!((total - 0.0123015).abs() < 1e-12, "{total}");
        assert_eq!(sum(&s, "absent_total"), None);
        assert_eq!(
            value(&s, "godwit_bpf_program_runs_total", &[("program", "nope")]),
            None
        );
        // `_created` is a different sample name from `_total`.
        assert_eq!(
            value(
                &s,
                "godwit_bpf_program_run_time_seconds_total",
                &[("program", "sched_switch")]
            ),
            Some(0.0123)
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "no_value",
            "x{a=\"1\"",
            "x{a=1} 2",
            "x{a=\"1} 2",
            "x 12abc",
            "9bad 1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
