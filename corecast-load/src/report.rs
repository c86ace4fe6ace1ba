//! What a run reports: the JSON document (a serde struct: its fields are the format that
//! `bench/compare.sh` reads) and the latency-percentile chart.
//!
//! Runs on: the load tool's main thread, at the end of a run.

use serde::Serialize;

use crate::client::Histogram;

/// The JSON report of a run. Figures that could not be measured (no `--server-pid`, no
/// `--server-cpus`) are `null`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) connections: usize,
    pub(crate) failed: usize,
    pub(crate) connect_per_sec: f64,
    pub(crate) server_rss_per_idle_conn_bytes: Option<f64>,
    pub(crate) sent: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) received: u64,
    pub(crate) delivery_ratio: f64,
    pub(crate) publish_secs: f64,
    pub(crate) drained_secs: f64,
    pub(crate) deliveries_per_sec: f64,
    pub(crate) latency_us: Latency,
    pub(crate) server_cpu_secs: Option<f64>,
    pub(crate) server_cpu_per_delivery_us: Option<f64>,
    pub(crate) server_cores: String,
    pub(crate) server_core_secs: Option<f64>,
    pub(crate) server_core_per_delivery_us: Option<f64>,
    pub(crate) load_tool_cpu_secs: f64,
    pub(crate) load_tool_cpu_share: f64,
    pub(crate) closed_early: usize,
}

/// Publish-to-receive latency percentiles, in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Report {
    /// The report as one line of JSON.
    pub(crate) fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// A latency-by-percentile chart: x is the percentile on a "nines" scale, y the latency
/// in milliseconds (linear), in the style of HdrHistogram's plots.
pub(crate) fn percentile_svg(h: &Histogram, title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 400.0;
    const PAD: f64 = 60.0;
    let nines = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999];
    // x position of quantile q: log10(1 / (1 - q)), 0 at the median's left edge.
    let x_of = |q: f64| (1.0 / (1.0 - q.min(0.99999))).log10();
    let x_max = x_of(0.9999);
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-(i as f64) / 100.0);
            (x_of(q), h.value_at_quantile(q) as f64 / 1000.0)
        })
        .filter(|(x, _)| *x <= x_max)
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let sx = |x: f64| PAD + x / x_max * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - y / y_max * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        W / 2.0
    );
    svg.push_str(&format!(
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"black\"/>\n",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    ));
    for q in nines {
        let x = sx(x_of(q));
        let label = if q == 0.0 { "0%".to_string() } else { format!("{}%", q * 100.0) };
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{PAD}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            H - PAD,
            H - PAD + 18.0
        ));
    }
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = sy(v);
        svg.push_str(&format!(
            "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            W - PAD,
            PAD - 6.0,
            y + 4.0
        ));
    }
    let path: Vec<String> =
        points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>\n",
        path.join(" ")
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">latency (ms)</text>\n</svg>\n",
        W / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    ));
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::new_histogram;

    #[test]
    fn svg_chart_is_well_formed() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let svg = percentile_svg(&h, "test");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("99.9%"));
    }
}

/// The reconnect-storm scenario's report: how fast the clients of a draining node arrived
/// at the surviving node.
#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    pub(crate) connections: usize,
    /// Connections the draining node ended (Close or EOF) within the window.
    pub(crate) ended: usize,
    /// Of those, reconnected to the surviving node.
    pub(crate) reconnected: usize,
    pub(crate) failed: usize,
    /// From the signal to the first and the last end, in ms.
    pub(crate) first_end_ms: f64,
    pub(crate) last_end_ms: f64,
    /// From the signal to the last reconnect, in ms.
    pub(crate) last_reconnect_ms: f64,
    /// The highest reconnect rate the surviving node saw, over any 100 ms and any 1 s.
    pub(crate) peak_per_sec_100ms: f64,
    pub(crate) peak_per_sec_1s: f64,
}

impl StormReport {
    /// Peak rate over windows of `window_ms`, from reconnect times in ms since the signal.
    pub(crate) fn peak_per_sec(times_ms: &[f64], window_ms: f64) -> f64 {
        let mut sorted = times_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut peak = 0usize;
        let mut start = 0;
        for end in 0..sorted.len() {
            while sorted[end] - sorted[start] >= window_ms {
                start += 1;
            }
            peak = peak.max(end + 1 - start);
        }
        peak as f64 * 1000.0 / window_ms
    }
}
