//! Demand traces: per service, one value per step of CPU (cores), memory (bytes) and dirty rate
//! (bytes/s); read from and written to a small CSV format.
//!
//! ```text
//! step,entity,cpu_cores,memory_bytes,dirty_bytes_per_second
//! 0,redis,0.12,8421376,40960
//! ```
//!
//! Lines starting with `#` and blank lines are ignored. Each entity becomes one [`Trace`]; its
//! steps are shifted so the first is 0, and missing steps repeat the previous value.

use std::fmt;
use std::path::Path;

/// The CSV header, exactly.
pub const HEADER: &str = "step,entity,cpu_cores,memory_bytes,dirty_bytes_per_second";

/// Longest trace accepted (steps), so a typo in a step number cannot allocate gigabytes.
pub const MAX_STEPS: u64 = 1_000_000;

/// The demand of one service at one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Demand {
    /// CPU, in cores.
    pub cpu: f64,
    /// Memory, in bytes.
    pub mem: f64,
    /// Distinct bytes dirtied per second.
    pub dirty: f64,
}

/// One service's demand over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub steps: Vec<Demand>,
}

impl Trace {
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The demand at `step`, the trace repeating itself when `step` is past its end.
    pub fn at(&self, step: usize) -> Demand {
        if self.steps.is_empty() {
            Demand::default()
        } else {
            self.steps[step % self.steps.len()]
        }
    }

    /// Mean CPU demand, in cores.
    pub fn mean_cpu(&self) -> f64 {
        if self.steps.is_empty() {
            0.0
        } else {
            self.steps.iter().map(|d| d.cpu).sum::<f64>() / self.steps.len() as f64
        }
    }
}

/// A trace file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceError {
    pub file: String,
    /// 1-based line number; 0 when the problem is the file as a whole.
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        }
    }
}

impl std::error::Error for TraceError {}

/// Parses the CSV text of `file` (the name is only used in errors and trace names).
pub fn parse_csv(text: &str, file: &str) -> Result<Vec<Trace>, TraceError> {
    let err = |line: usize, msg: String| TraceError {
        file: file.to_owned(),
        line,
        msg,
    };
    // Per entity, in order of first appearance: (name, first step, last step, samples).
    let mut entities: Vec<(String, u64, u64, Vec<Demand>)> = Vec::new();
    let mut header_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !header_seen {
            if line != HEADER {
                return Err(err(lineno, format!("expected the header {HEADER:?}")));
            }
            header_seen = true;
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != 5 {
            return Err(err(
                lineno,
                format!("expected 5 comma-separated fields, found {}", fields.len()),
            ));
        }
        let step: u64 = fields[0].parse().map_err(|_| {
            err(
                lineno,
                format!("step {:?} is not a whole number", fields[0]),
            )
        })?;
        let entity = fields[1];
        if entity.is_empty() {
            return Err(err(lineno, "empty entity".into()));
        }
        let num = |idx: usize, what: &str| -> Result<f64, TraceError> {
            let v: f64 = fields[idx]
                .parse()
                .map_err(|_| err(lineno, format!("{what} {:?} is not a number", fields[idx])))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(lineno, format!("{what} {v} must be finite and >= 0")));
            }
            Ok(v)
        };
        let d = Demand {
            cpu: num(2, "cpu_cores")?,
            mem: num(3, "memory_bytes")?,
            dirty: num(4, "dirty_bytes_per_second")?,
        };
        let pos = match entities.iter().position(|e| e.0 == entity) {
            Some(p) => p,
            None => {
                entities.push((entity.to_owned(), step, step, vec![d]));
                continue;
            }
        };
        let e = &mut entities[pos];
        if step <= e.2 {
            return Err(err(
                lineno,
                format!(
                    "step {step} of {entity:?} is not after its previous step {}",
                    e.2
                ),
            ));
        }
        if step - e.1 >= MAX_STEPS {
            return Err(err(
                lineno,
                format!("{entity:?} spans more than {MAX_STEPS} steps"),
            ));
        }
        let prev = *e.3.last().expect("an entity has at least one sample");
        for _ in e.2 + 1..step {
            e.3.push(prev);
        }
        e.3.push(d);
        e.2 = step;
    }
    if !header_seen {
        return Err(err(0, "empty file: no header".into()));
    }
    if entities.is_empty() {
        return Err(err(0, "no data rows".into()));
    }
    Ok(entities
        .into_iter()
        .map(|(name, _, _, steps)| Trace { name, steps })
        .collect())
}

/// Writes traces in the CSV format (steps from 0).
pub fn to_csv(traces: &[Trace]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for t in traces {
        for (step, d) in t.steps.iter().enumerate() {
            out.push_str(&format!(
                "{step},{},{:.4},{:.0},{:.0}\n",
                t.name, d.cpu, d.mem, d.dirty
            ));
        }
    }
    out
}

/// Reads every `*.csv` file of `dir`, in file-name order. Trace names become `FILE/ENTITY`.
pub fn load_dir(dir: &Path) -> Result<Vec<Trace>, TraceError> {
    let io_err = |file: &Path, e: std::io::Error| TraceError {
        file: file.display().to_string(),
        line: 0,
        msg: e.to_string(),
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| io_err(&f, e))?;
        let stem = f
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for mut t in parse_csv(&text, &f.display().to_string())? {
            t.name = format!("{stem}/{}", t.name);
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entities_and_fills_gaps() {
        let text = format!(
            "# comment\n{HEADER}\n5,a,1.0,10,0\n5,b,0.5,20,1\n7,a,2.0,30,0\n\n8,b,0.25,20,1\n"
        );
        let t = parse_csv(&text, "x.csv").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
        let cpu: Vec<f64> = t[0].steps.iter().map(|d| d.cpu).collect();
        assert_eq!(cpu, [1.0, 1.0, 2.0]);
        assert_eq!(t[1].steps.len(), 4);
        assert_eq!(t[1].at(4).cpu, 0.5, "wraps around");
    }

    #[test]
    fn round_trips() {
        let t = vec![Trace {
            name: "s".into(),
            steps: vec![
                Demand {
                    cpu: 0.5,
                    mem: 1e6,
                    dirty: 4096.0,
                };
                3
            ],
        }];
        assert_eq!(parse_csv(&to_csv(&t), "f").unwrap(), t);
    }

    #[test]
    fn bad_files_name_file_and_line() {
        let cases = [
            ("", 0, "no header"),
            ("a,b\n", 1, "header"),
            (&format!("{HEADER}\n"), 0, "no data"),
            (&format!("{HEADER}\n0,a,1,2\n"), 2, "5 comma"),
            (&format!("{HEADER}\nx,a,1,2,3\n"), 2, "whole number"),
            (&format!("{HEADER}\n0,a,nan,2,3\n"), 2, "finite"),
            (&format!("{HEADER}\n0,a,-1,2,3\n"), 2, "finite"),
            (&format!("{HEADER}\n0,a,1,zz,3\n"), 2, "not a number"),
            (&format!("{HEADER}\n1,a,1,2,3\n1,a,1,2,3\n"), 3, "not after"),
            (&format!("{HEADER}\n0,,1,2,3\n"), 2, "empty entity"),
            (
                &format!("{HEADER}\n0,a,1,2,3\n99999999,a,1,2,3\n"),
                3,
                "spans",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse_csv(text, "t.csv").unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().starts_with("t.csv"), "{e}");
            assert!(e.msg.contains(needle), "{text:?}: {e}");
        }
    }
}
