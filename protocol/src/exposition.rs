//! The Prometheus text exposition format (0.0.4) from OpenMetrics text, for scrapers and tools
//! that read only the older format (`promtool check metrics`, many agents). The two differ in
//! the framing: counters are named without `_total` in OpenMetrics' `# HELP`/`# TYPE` lines but
//! with it in the old format, OpenMetrics has `# UNIT` lines and ends with `# EOF`.

use std::collections::HashSet;

/// Content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus itself does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The content type and body of a `/metrics` answer: OpenMetrics for scrapers that ask for it
/// (Prometheus does), the Prometheus text format for everyone else.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// `openmetrics` rewritten in the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_and_the_openmetrics_framing_goes() {
        let om = "# HELP q_requests Requests.\n# TYPE q_requests counter\n\
                  q_requests_total{k=\"a\"} 3\n# HELP q_up Up.\n# TYPE q_up gauge\n\
                  # UNIT q_up x\nq_up 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP q_requests_total Requests.\n# TYPE q_requests_total counter\n\
             q_requests_total{k=\"a\"} 3\n# HELP q_up Up.\n# TYPE q_up gauge\nq_up 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
