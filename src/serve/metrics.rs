//! Counters for `/metrics`, kept with atomics (no lock on the request path) and written out in
//! Prometheus' text format by hand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request latency bucket bounds, seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Batch size bucket bounds, images.
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus histogram: cumulative counts are computed when rendered.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, then one for values above the last bound.
    counts: Vec<AtomicU64>,
    /// Sum of the observed values, in millionths (atomics hold integers).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The routes responses are counted by (anything else is `other`).
pub const ROUTES: [&str; 5] = ["/v1/predict", "/healthz", "/readyz", "/metrics", "other"];

/// The index of `/v1/predict` in [`ROUTES`].
pub const PREDICT: usize = 0;

/// Index of `path` in [`ROUTES`].
pub fn route_index(path: &str) -> usize {
    ROUTES
        .iter()
        .position(|&r| r == path)
        .unwrap_or(ROUTES.len() - 1)
}

/// Everything `/metrics` reports that is counted as it happens (the queue depth and readiness
/// are read when rendering).
#[derive(Debug)]
pub struct Metrics {
    /// Responses by route ([`ROUTES`]) and status code: `route * 600 + code`.
    statuses: Vec<AtomicU64>,
    /// Seconds from a prediction request's arrival to its response.
    pub latency: Histogram,
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Images classified.
    pub images: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            statuses: (0..600 * ROUTES.len()).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::new(&LATENCY_BOUNDS),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            images: AtomicU64::new(0),
        }
    }
}

/// What the renderer reads from the server at the time of the scrape.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub ready: bool,
    pub body_bytes_held: usize,
    pub body_budget: usize,
    pub connections_open: usize,
}

impl Metrics {
    /// Count a response of `route` (an index in [`ROUTES`]).
    pub fn count_status(&self, route: usize, status: u16) {
        if let Some(counter) = self.counter(route, status) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter(&self, route: usize, status: u16) -> Option<&AtomicU64> {
        if route >= ROUTES.len() || status >= 600 {
            return None;
        }
        self.statuses.get(route * 600 + usize::from(status))
    }

    /// Responses of `route` sent with `status` so far.
    pub fn status_count(&self, route: usize, status: u16) -> u64 {
        self.counter(route, status)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// `(status, count)` for every status `route` sent at least once, by code.
    pub fn statuses(&self, route: usize) -> Vec<(u16, u64)> {
        (0..600u16)
            .filter_map(|code| {
                let n = self.status_count(route, code);
                (n > 0).then_some((code, n))
            })
            .collect()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP graft_http_requests_total HTTP responses sent, by route and status code.\n",
        );
        out.push_str("# TYPE graft_http_requests_total counter\n");
        for (route, name) in ROUTES.iter().enumerate() {
            for (code, n) in self.statuses(route) {
                let _ = writeln!(
                    out,
                    "graft_http_requests_total{{route=\"{name}\",status=\"{code}\"}} {n}"
                );
            }
        }
        self.latency.render(
            &mut out,
            "graft_predict_duration_seconds",
            "Time from a prediction request's arrival to its response.",
        );
        self.batch_size.render(
            &mut out,
            "graft_batch_size",
            "Images in each forward pass of the model.",
        );
        let images = self.images.load(Ordering::Relaxed);
        let gauges = [
            (
                "graft_images_total",
                "counter",
                "Images classified.",
                images as f64,
            ),
            (
                "graft_queue_depth",
                "gauge",
                "Images waiting for the model.",
                gauges.queue_depth as f64,
            ),
            (
                "graft_queue_capacity",
                "gauge",
                "Images the queue holds before answering 503.",
                gauges.queue_capacity as f64,
            ),
            (
                "graft_model_ready",
                "gauge",
                "1 once the model is loaded.",
                f64::from(u8::from(gauges.ready)),
            ),
            (
                "graft_body_bytes_held",
                "gauge",
                "Bytes of request bodies in memory, reserved from the body budget.",
                gauges.body_bytes_held as f64,
            ),
            (
                "graft_body_budget_bytes",
                "gauge",
                "Bytes of request bodies the server holds at once at most (--body-budget).",
                gauges.body_budget as f64,
            ),
            (
                "graft_connections_open",
                "gauge",
                "Connections open (at most --max-connections).",
                gauges.connections_open as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn histograms_are_cumulative_and_statuses_counted() {
        let m = Metrics::default();
        for s in [0.003, 0.02, 0.02, 100.0] {
            m.latency.observe(s);
        }
        for n in [1.0, 3.0, 32.0] {
            m.batch_size.observe(n);
        }
        m.count_status(0, 200);
        m.count_status(0, 200);
        m.count_status(0, 503);
        m.count_status(route_index("/healthz"), 200);
        m.count_status(route_index("/nowhere"), 404);
        let text = m.render(Gauges {
            queue_depth: 5,
            queue_capacity: 64,
            ready: true,
            body_bytes_held: 4096,
            body_budget: 1 << 20,
            connections_open: 3,
        });
        assert_eq!(
            line(
                &text,
                "graft_http_requests_total{route=\"/v1/predict\",status=\"200\"}"
            ),
            "graft_http_requests_total{route=\"/v1/predict\",status=\"200\"} 2"
        );
        assert!(text.contains("{route=\"/v1/predict\",status=\"503\"} 1"));
        assert!(text.contains("{route=\"/healthz\",status=\"200\"} 1"));
        assert!(text.contains("{route=\"other\",status=\"404\"} 1"));
        assert!(!text.contains("route=\"/metrics\""));
        let bucket = |le: &str| {
            line(
                &text,
                &format!("graft_predict_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
        };
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("0.025"), "3");
        assert_eq!(bucket("30"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(
            line(&text, "graft_predict_duration_seconds_sum"),
            "graft_predict_duration_seconds_sum 100.043"
        );
        assert!(text.contains("graft_batch_size_bucket{le=\"4\"} 2"));
        assert!(text.contains("graft_batch_size_count 3"));
        assert!(text.contains("graft_queue_depth 5"));
        assert!(text.contains("graft_model_ready 1"));
        assert!(text.contains("graft_body_bytes_held 4096"));
        assert!(text.contains("graft_body_budget_bytes 1048576"));
        assert!(text.contains("graft_connections_open 3"));
        assert_eq!(m.status_count(0, 200), 2);
        assert_eq!(m.statuses(0), vec![(200, 2), (503, 1)]);
        // Every line is a comment or `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.split(' ').count(), 2, "{l}");
        }
    }
}
