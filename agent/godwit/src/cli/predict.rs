//! `godwit predict`: the running agent's load forecasts with their prediction intervals.

use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct PredictArgs {
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document.
    #[arg(long)]
    json: bool,
    /// Forecast steps to show (besides the last one).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10])]
    steps: Vec<usize>,
}

pub(super) fn run(args: PredictArgs) -> ExitCode {
    super::show(
        "predict",
        &args.api.target(),
        "/v1/forecast",
        args.json,
        |doc| render(doc, &args.steps),
    )
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ratio" => format!("{:.1}%", v * 100.0),
        "cores" => format!("{v:.2}"),
        "bytes" => format!("{:.1}Mi", v / (1024.0 * 1024.0)),
        "bytes_per_second" => format!("{:.2}MB/s", v / 1e6),
        _ => format!("{v:.3}"),
    }
}

/// One line per series: last value, then the mean and interval at each requested step and at
/// the horizon.
pub(super) fn render(doc: &Value, steps: &[usize]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let horizon = doc["horizon"].as_u64().unwrap_or(0) as usize;
    let level = doc["level"].as_f64().unwrap_or(0.0) * 100.0;
    let secs = doc["interval_seconds"].as_f64().unwrap_or(1.0);
    let mut shown: Vec<usize> = steps
        .iter()
        .copied()
        .filter(|&s| s >= 1 && s <= horizon)
        .collect();
    if horizon > 0 && !shown.contains(&horizon) {
        shown.push(horizon);
    }
    let _ = write!(
        out,
        "{:<34} {:<10} {:<13} {:>10}",
        "ENTITY", "METRIC", "MODEL", "NOW"
    );
    for s in &shown {
        let ahead = *s as f64 * secs;
        let ahead = if ahead.fract() == 0.0 {
            format!("{ahead:.0}")
        } else {
            format!("{ahead:.1}")
        };
        let _ = write!(out, "  {:>28}", format!("+{ahead}s mean [{level:.0}%]"));
    }
    out.push('\n');
    for series in doc["series"].as_array().into_iter().flatten() {
        let unit = series["unit"].as_str().unwrap_or("");
        let entity = match series["entity"]["kind"].as_str() {
            Some("node") => "node".to_string(),
            _ => series["entity"]["id"].as_str().unwrap_or("?").to_string(),
        };
        let last = series["last"]
            .as_f64()
            .map(|v| fmt_value(v, unit))
            .unwrap_or_else(|| "-".into());
        let model = series["model"].as_str().unwrap_or("");
        let model = if model.starts_with("none") {
            "fitting"
        } else {
            model
        };
        let _ = write!(
            out,
            "{:<34} {:<10} {:<13} {:>10}",
            entity,
            series["metric"].as_str().unwrap_or(""),
            model,
            last
        );
        let points = series["points"].as_array();
        for s in &shown {
            let cell = points
                .and_then(|p| p.get(s - 1))
                .map(|p| {
                    let f = |k: &str| {
                        p[k].as_f64()
                            .map(|v| fmt_value(v, unit))
                            .unwrap_or_default()
                    };
                    format!("{} [{}, {}]", f("mean"), f("lower"), f("upper"))
                })
                .unwrap_or_else(|| "-".into());
            let _ = write!(out, "  {cell:>28}");
        }
        out.push('\n');
    }
    out
}
