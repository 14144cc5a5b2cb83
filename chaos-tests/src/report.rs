//! What a run tells a person: a summary table, the verdicts as JSON, the
//! history as JSON lines, and a timeline picture (SVG) of every
//! operation's latency over time with the fault windows shaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::history::FaultWindow;
use crate::history::Line;
use crate::history::Op;
use crate::history::Outcome;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// The checker could not decide (its search ran out of time).
    Unknown,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckerVerdict {
    pub checker: String,
    pub status: Status,
    /// What was checked, or what went wrong.
    pub detail: String,
    pub problems: Vec<String>,
}

impl CheckerVerdict {
    pub fn from_problems(checker: &str, checked: String, problems: Vec<String>) -> Self {
        let status = if problems.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        };
        let detail = match problems.first() {
            None => checked,
            Some(first) => format!("{} problem(s); first: {first}", problems.len()),
        };
        Self {
            checker: checker.into(),
            status,
            detail,
            problems,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: f64,
    pub controllers: usize,
    pub faults_enabled: Vec<String>,
    pub operations: BTreeMap<String, usize>,
    pub faults: BTreeMap<String, usize>,
    pub checkers: Vec<CheckerVerdict>,
}

impl Report {
    pub fn new(
        seed: u64,
        duration_s: f64,
        controllers: usize,
        faults_enabled: Vec<String>,
        ops: &[Op],
        faults: &[FaultWindow],
    ) -> Self {
        let mut operations = BTreeMap::new();
        for op in ops {
            *operations.entry("total".to_string()).or_default() += 1;
            let outcome = match op.outcome {
                Outcome::Ok => "ok",
                Outcome::Fail => "fail",
                Outcome::Info => "info",
            };
            *operations.entry(outcome.to_string()).or_default() += 1;
            let kind = serde_json::to_value(op.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            *operations.entry(kind.unwrap_or_default()).or_default() += 1;
        }
        let mut by_kind = BTreeMap::new();
        for f in faults {
            *by_kind.entry(f.kind.clone()).or_default() += 1;
        }
        Self {
            seed,
            duration_s,
            controllers,
            faults_enabled,
            operations,
            faults: by_kind,
            checkers: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        self.checkers.iter().all(|c| c.status == Status::Pass)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let counts = |m: &BTreeMap<String, usize>| {
            m.iter()
                .filter(|(k, _)| *k != "total")
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "berth-chaos: seed {}, {:.0} s, {} controllers, faults {}",
            self.seed,
            self.duration_s,
            self.controllers,
            self.faults_enabled.join(",")
        );
        let _ = writeln!(
            out,
            "operations: {} ({})",
            self.operations.get("total").copied().unwrap_or(0),
            counts(&self.operations)
        );
        let _ = writeln!(
            out,
            "faults: {} ({})",
            self.faults.values().sum::<usize>(),
            counts(&self.faults)
        );
        let width = self
            .checkers
            .iter()
            .map(|c| c.checker.len())
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "{:width$}  verdict  detail", "checker");
        for c in &self.checkers {
            let verdict = match c.status {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Unknown => "UNKNOWN",
            };
            let _ = writeln!(out, "{:width$}  {verdict:7}  {}", c.checker, c.detail);
        }
        let _ = writeln!(
            out,
            "result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        out
    }

    /// Writes history.jsonl, verdicts.json and timeline.svg into `dir`.
    pub fn write(&self, dir: &Path, ops: &[Op], faults: &[FaultWindow]) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut lines: Vec<(f64, Line)> = ops
            .iter()
            .map(|o| (o.invoke_ms, Line::Op(o.clone())))
            .collect();
        lines.extend(faults.iter().map(|f| (f.start_ms, Line::Fault(f.clone()))));
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut history = String::new();
        for (_, line) in &lines {
            history.push_str(&serde_json::to_string(line).map_err(std::io::Error::other)?);
            history.push('\n');
        }
        std::fs::write(dir.join("history.jsonl"), history)?;
        let verdicts = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("verdicts.json"), verdicts + "\n")?;
        std::fs::write(
            dir.join("timeline.svg"),
            timeline(ops, faults, self.duration_s * 1000.0),
        )
    }
}

const FAULT_COLORS: [(&str, &str); 5] = [
    ("kill", "#e45756"),
    ("pause", "#f58518"),
    ("partition", "#4c78a8"),
    ("netem", "#b279a2"),
    ("agent", "#54a24b"),
];

/// Latency (log scale, 1 ms to 10 s) of every operation at its invoke
/// time; unknown outcomes as ticks along the top; faults as bands.
pub fn timeline(ops: &[Op], faults: &[FaultWindow], span_ms: f64) -> String {
    let (w, h, left, top, bottom) = (1200.0, 420.0, 60.0, 30.0, 50.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - top - bottom;
    let span = ops
        .iter()
        .map(|o| o.complete_ms.unwrap_or(o.invoke_ms))
        .chain(faults.iter().map(|f| f.end_ms))
        .fold(span_ms.max(1.0), f64::max);
    let x = |t: f64| left + plot_w * t / span;
    let y = |ms: f64| top + plot_h * (1.0 - (ms.max(1.0).log10() / 4.0).min(1.0));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for f in faults {
        let color = FAULT_COLORS
            .iter()
            .find(|(k, _)| *k == f.kind)
            .map_or("#999", |(_, c)| c);
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="{color}" fill-opacity="0.18"><title>{}: {}</title></rect>"#,
            x(f.start_ms),
            (x(f.end_ms) - x(f.start_ms)).max(1.0),
            f.kind,
            escape(&f.detail)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" fill="{color}">{}</text>"#,
            x(f.start_ms) + 2.0,
            top - 4.0,
            f.kind
        );
    }
    for (label, ms) in [
        ("1 ms", 1.0),
        ("10 ms", 10.0),
        ("100 ms", 100.0),
        ("1 s", 1000.0),
        ("10 s", 10000.0),
    ] {
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{label}</text>"##,
            left + plot_w,
            y(ms),
            y(ms),
            y(ms) + 4.0
        );
    }
    let step = nice_step(span / 1000.0);
    let mut t = 0.0;
    while t <= span / 1000.0 {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
            x(t * 1000.0),
            h - bottom + 16.0
        );
        t += step;
    }
    for op in ops {
        let (color, cy) = match (op.outcome, op.latency_ms()) {
            (Outcome::Ok, Some(l)) => ("#2ca02c", y(l)),
            (Outcome::Fail, Some(l)) => ("#d62728", y(l)),
            _ => ("#ff7f0e", top + 3.0),
        };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{cy:.1}" r="1.6" fill="{color}"/>"#,
            x(op.invoke_ms)
        );
    }
    let legend = [
        ("ok", "#2ca02c"),
        ("fail", "#d62728"),
        ("unknown (top)", "#ff7f0e"),
    ];
    for (i, (label, color)) in legend.iter().enumerate() {
        let lx = left + i as f64 * 120.0;
        let _ = writeln!(
            svg,
            r#"<circle cx="{lx}" cy="{}" r="4" fill="{color}"/><text x="{}" y="{}">{label}</text>"#,
            h - 12.0,
            lx + 8.0,
            h - 8.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}">latency of each operation (log scale) by invoke time; bands: faults</text>"#,
        left + 400.0,
        h - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn nice_step(span_s: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| span_s / s <= 20.0)
        .unwrap_or(1200.0)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
