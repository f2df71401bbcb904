//! `/metrics` in Prometheus's text exposition format (version 0.0.4): the project summary as
//! gauges and counters, for Prometheus and the dashboards built on it.

use std::fmt::Write;

use herd_store::ProjectSummary;

/// How long after its last contact a host still counts as active.
pub(crate) const ACTIVE_MS: u64 = 24 * 3600 * 1000;

/// The window throughput is measured over.
pub(crate) const WINDOW_MS: u64 = 10 * 60 * 1000;

/// Renders the summary as Prometheus metrics.
pub(crate) fn render(summary: &ProjectSummary) -> String {
    let metrics: [(&str, &str, &str, f64); 13] = [
        (
            "herd_volunteers",
            "gauge",
            "Volunteers registered.",
            summary.volunteers as f64,
        ),
        (
            "herd_volunteers_active",
            "gauge",
            "Volunteers with a host seen in the last 24 hours.",
            summary.volunteers_active as f64,
        ),
        (
            "herd_hosts",
            "gauge",
            "Hosts registered.",
            summary.hosts as f64,
        ),
        (
            "herd_hosts_active",
            "gauge",
            "Hosts seen in the last 24 hours.",
            summary.hosts_active as f64,
        ),
        (
            "herd_units_per_second",
            "gauge",
            "Units validated per second over the last 10 minutes.",
            summary.units_per_second,
        ),
        (
            "herd_fuel_per_second",
            "gauge",
            "Fuel credited per second over the last 10 minutes.",
            summary.fuel_per_second,
        ),
        (
            "herd_queue_depth",
            "gauge",
            "Open units waiting for results.",
            summary.queue_depth as f64,
        ),
        (
            "herd_replicas_in_progress",
            "gauge",
            "Replicas assigned and not yet reported.",
            summary.replicas_in_progress as f64,
        ),
        (
            "herd_batches_open",
            "gauge",
            "Batches with open units.",
            summary.batches_open as f64,
        ),
        (
            "herd_units_validated_total",
            "counter",
            "Units validated (of batches not retired).",
            summary.units_validated as f64,
        ),
        (
            "herd_units_failed_total",
            "counter",
            "Units failed (of batches not retired).",
            summary.units_failed as f64,
        ),
        (
            "herd_credit",
            "gauge",
            "Credit granted less credit revoked.",
            summary.total_credit,
        ),
        (
            "herd_throughput_window_seconds",
            "gauge",
            "The window the per-second figures are measured over.",
            summary.window_secs as f64,
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in metrics {
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample has its HELP and TYPE, a valid metric name and a number that parses, as
    /// Prometheus's text format requires.
    #[test]
    fn metrics_follow_the_text_format() {
        let summary = ProjectSummary {
            volunteers: 3,
            hosts_active: 2,
            units_per_second: 0.25,
            fuel_per_second: 1.5e9,
            total_credit: 12.5,
            window_secs: 600,
            ..ProjectSummary::default()
        };
        let text = render(&summary);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 13 * 3);
        for triple in lines.chunks(3) {
            let name = triple[2].split(' ').next().expect("name");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    && name.starts_with("herd_"),
                "{name}"
            );
            assert!(triple[0].starts_with(&format!("# HELP {name} ")));
            assert!(
                triple[1] == format!("# TYPE {name} gauge")
                    || triple[1] == format!("# TYPE {name} counter")
            );
            let value: f64 = triple[2]
                .split(' ')
                .nth(1)
                .expect("value")
                .parse()
                .expect("a number");
            assert!(value.is_finite());
        }
        assert!(text.contains("\nherd_volunteers 3\n"));
        assert!(text.contains("\nherd_fuel_per_second 1500000000\n"));
        assert!(text.contains("\nherd_credit 12.5\n"));
    }
}
