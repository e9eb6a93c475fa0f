//! Prometheus text exposition (format 0.0.4), written by hand but checked: every family gets
//! `# HELP` and `# TYPE` before its samples, label values are escaped, and histograms carry
//! their cumulative buckets, `_sum` and `_count`. Also the histogram itself, a plain value
//! the sans-IO layers update. `promtool check metrics` reads the result in a test.
//!
//! Why not a metrics crate: metric names are public interface, and the OpenMetrics naming a
//! client library imposes (a counter family is named without `_total`) would clash with names
//! operators already scrape (the gauge `understudy_calls` beside the counter
//! `understudy_calls_total`).

use std::fmt::{Display, Write as _};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A distribution: counts per upper bound (cumulative when written), their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Bucket bounds in seconds for things that take milliseconds to seconds (answer delay,
/// re-binds).
pub const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds in seconds for round-trip times.
pub const RTT: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Histogram {
    /// An empty histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Count one observation.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b)
            && let Some(c) = self.counts.get_mut(i)
        {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Default for Histogram {
    /// Bucketed for durations from milliseconds to a minute ([`SECONDS`]).
    fn default() -> Self {
        Self::new(SECONDS)
    }
}

/// A `/metrics` page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A label value with `\`, `"` and newlines escaped.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start family `name`: its help and type.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escaped(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, Kind::Histogram, help);
        let mut cumulative = 0;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            cumulative += c;
            let le = b.to_string();
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }

    /// Append another page's families.
    pub fn append(&mut self, other: Exposition) {
        self.out.push_str(&other.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_and_histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.single("x_total", Kind::Counter, "Things.", 3);
        e.family("y", Kind::Gauge, "Why.");
        e.sample("y", &[("trunk", "a\"b\\c")], 1);
        e.histogram("z_seconds", "Zeds.", &h);
        let t = e.finish();
        assert!(t.starts_with("# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n"));
        assert!(t.contains("y{trunk=\"a\\\"b\\\\c\"} 1\n"));
        assert!(t.contains("z_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(t.contains("z_seconds_bucket{le=\"1\"} 3\n"));
        assert!(t.contains("z_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(t.contains("z_seconds_count 4\n"));
        assert!(t.contains("z_seconds_sum 4.25\n"));
    }
}
