//! Treatment-against-control charts: the rollout's health samples bucketed over time, one
//! small SVG per metric with a line per group, drawn on the server (no script on the page).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::html::esc;

/// Buckets across a chart.
const BUCKETS: usize = 48;
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 150.0;
const PAD: f64 = 28.0;

/// One sample: when, treated or not, in the patching window or not, its metrics.
pub(crate) type Sample = (u64, bool, bool, BTreeMap<String, f64>);

/// One metric's series: per bucket, the mean of the treated and of the control samples.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Series {
    pub metric: String,
    pub treatment: Vec<Option<f64>>,
    pub control: Vec<Option<f64>>,
    /// Buckets holding a treated host's patching window.
    pub patching: Vec<bool>,
}

/// The samples of `[start, end]` in [`BUCKETS`] buckets, per metric.
pub(crate) fn series(samples: &[Sample], start: u64, end: u64) -> Vec<Series> {
    let span = end.saturating_sub(start).max(1);
    let bucket = |at: u64| {
        let i = (at.saturating_sub(start) as u128 * BUCKETS as u128 / u128::from(span)) as usize;
        i.min(BUCKETS - 1)
    };
    // metric -> bucket -> (treated sum, n, control sum, n)
    let mut sums: BTreeMap<&str, Vec<(f64, u32, f64, u32)>> = BTreeMap::new();
    let mut patching = vec![false; BUCKETS];
    for (at, treated, in_patch, metrics) in samples {
        let b = bucket(*at);
        if *treated && *in_patch {
            patching[b] = true;
        }
        for (name, value) in metrics {
            let slot = &mut sums
                .entry(name)
                .or_insert_with(|| vec![(0.0, 0, 0.0, 0); BUCKETS])[b];
            if *treated {
                slot.0 += value;
                slot.1 += 1;
            } else {
                slot.2 += value;
                slot.3 += 1;
            }
        }
    }
    let mean = |sum: f64, n: u32| (n > 0).then(|| sum / f64::from(n));
    sums.into_iter()
        .map(|(metric, buckets)| Series {
            metric: metric.to_string(),
            treatment: buckets.iter().map(|b| mean(b.0, b.1)).collect(),
            control: buckets.iter().map(|b| mean(b.2, b.3)).collect(),
            patching: patching.clone(),
        })
        .collect()
}

/// One chart: the metric's name, its two lines, the patching buckets shaded, the y scale.
pub(crate) fn svg(s: &Series) -> String {
    let top = s
        .treatment
        .iter()
        .chain(&s.control)
        .flatten()
        .fold(0.0f64, |a, &b| a.max(b));
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let x = |i: usize| PAD + (WIDTH - 2.0 * PAD) * (i as f64 + 0.5) / BUCKETS as f64;
    let y = |v: f64| HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * v / top;
    let mut out = format!(
        "<svg class=\"chart\" data-metric=\"{}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{} over time, treatment against control\">",
        esc(&s.metric),
        esc(&s.metric)
    );
    let band = (WIDTH - 2.0 * PAD) / BUCKETS as f64;
    for (i, p) in s.patching.iter().enumerate() {
        if *p {
            let _ = write!(
                out,
                "<rect class=\"patching\" x=\"{:.1}\" y=\"{PAD}\" width=\"{band:.1}\" height=\"{:.1}\"/>",
                x(i) - band / 2.0,
                HEIGHT - 2.0 * PAD
            );
        }
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{PAD}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\"/>\
         <text x=\"{PAD}\" y=\"16\" class=\"title\">{}</text>\
         <text x=\"{r:.1}\" y=\"16\" class=\"scale\" text-anchor=\"end\">max {top:.3}</text>",
        esc(&s.metric),
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
    );
    for (class, values) in [("control", &s.control), ("treatment", &s.treatment)] {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                out,
                "<polyline class=\"{class}\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_bucketed_per_group_and_patching_is_marked() {
        let m = |v: f64| BTreeMap::from([("tcp_retransmits".to_string(), v)]);
        let samples = vec![
            (0, true, true, m(9.0)),
            (0, false, false, m(1.0)),
            (0, false, false, m(3.0)),
            (999, true, false, m(4.0)),
        ];
        let s = &series(&samples, 0, 1000)[0];
        assert_eq!(s.metric, "tcp_retransmits");
        assert_eq!(s.treatment[0], Some(9.0));
        assert_eq!(s.control[0], Some(2.0));
        assert_eq!(s.treatment[BUCKETS - 1], Some(4.0));
        assert_eq!(s.control[BUCKETS - 1], None);
        assert!(s.patching[0] && !s.patching[BUCKETS - 1]);
        let chart = svg(s);
        assert!(chart.contains("class=\"treatment\"") && chart.contains("class=\"control\""));
        assert!(chart.contains("class=\"patching\""));
    }
}
