//! The pieces every dashboard page is made of: escaping, the layout, times and badges.

use std::fmt::Write as _;

use graft_protocol::rollout::RolloutState;

/// Text made safe for HTML content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}\
header{background:#1d232b;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}\
header a{color:#cfe3ff;text-decoration:none}header .who{margin-left:auto;color:#9aa7b4}\
main{padding:16px 24px;max-width:1280px}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;background:#fff;width:100%}th,td{padding:5px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}\
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}\
.running{background:#2f6fdb}.paused{background:#8a8f98}.halted{background:#c9302c}.completed{background:#2e8b57}\
.aborted{background:#6b6f76}.rolled-back{background:#b8860b}.continue{background:#2e8b57}.halt{background:#c9302c}\
.reason{background:#fff3f2;border:1px solid #f1b8b4;padding:8px 12px;border-radius:4px}\
.bar{background:#e3e6ea;height:8px;width:120px;display:inline-block;vertical-align:middle}\
.bar span{background:#2f6fdb;height:8px;display:block}\
svg.chart{background:#fff;border:1px solid #e3e6ea;margin:6px 12px 6px 0}\
svg .treatment{fill:none;stroke:#d9480f;stroke-width:2}svg .control{fill:none;stroke:#1c7ed6;stroke-width:2}\
svg .patching{fill:#fff0c2}svg .axis{stroke:#adb5bd}svg .title{font-size:12px;font-weight:600}svg .scale{font-size:11px;fill:#6b6f76}\
.legend span{display:inline-block;width:14px;height:3px;margin:0 4px 3px 12px;vertical-align:middle}\
form.filters{display:flex;gap:8px;margin:8px 0}form.filters input,form.filters select{padding:4px}\
.muted{color:#6b6f76}";

/// A whole page around `body`.
pub(crate) fn page(title: &str, who: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · graft fleet</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <header><strong>graft fleet</strong><a href=\"/\">Rollouts</a><a href=\"/hosts\">Hosts</a>\
         <a href=\"/metrics\">Metrics</a>",
        esc(title)
    );
    if let Some(who) = who {
        let _ = write!(
            out,
            "<span class=\"who\">{} · <a href=\"/logout\">sign out</a></span>",
            esc(who)
        );
    }
    let _ = write!(out, "</header><main>{body}</main></body></html>");
    out
}

/// A state as a coloured badge.
pub(crate) fn state_badge(state: RolloutState) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(state.as_str()))
}

/// A decision (`continue`, `halt`) as a badge.
pub(crate) fn decision_badge(decision: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", esc(decision))
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A share as a small bar and its numbers.
pub(crate) fn progress(done: u64, total: u64) -> String {
    let pct = if total == 0 {
        0.0
    } else {
        100.0 * done as f64 / total as f64
    };
    format!("<span class=\"bar\"><span style=\"width:{pct:.0}%\"></span></span> {done} / {total}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">O'Neil & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;"
        );
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_796_313_250_000), "2026-12-03 15:54:10");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00");
    }
}
