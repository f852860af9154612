//! Renders library progress: bars on a terminal, plain lines otherwise, nothing for `--json`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use graft_progress::{Progress, SharedProgress, Task, Unit};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Picks the renderer for this invocation.
pub fn for_output(json: bool) -> SharedProgress {
    if json {
        graft_progress::silent()
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        })
    } else {
        Arc::new(Lines)
    }
}

struct Bars {
    multi: MultiProgress,
}

impl Progress for Bars {
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Task> {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        let template = match (total.is_some(), unit) {
            (true, Unit::Bytes) => {
                "{prefix:>32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}"
            }
            (true, Unit::Items) => "{prefix:>32} [{bar:30}] {pos}/{len} {msg}",
            (false, Unit::Bytes) => "{prefix:>32} {spinner} {bytes} {elapsed} {msg}",
            (false, Unit::Items) => "{prefix:>32} {spinner} {elapsed} {msg}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Box::new(BarTask(self.multi.add(bar)))
    }
}

struct BarTask(ProgressBar);

impl Task for BarTask {
    fn set(&mut self, position: u64) {
        self.0.set_position(position);
    }
    fn set_total(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn message(&mut self, message: &str) {
        self.0.set_message(message.to_string());
    }
    fn finish(self: Box<Self>, summary: &str) {
        self.0.finish_and_clear();
        self.0.println(format!("  done: {summary}"));
    }
}

/// For logs and CI: one line when a task starts, one when it ends.
struct Lines;

struct LineTask {
    label: String,
    started: std::time::Instant,
}

impl Progress for Lines {
    fn start(&self, label: &str, _: Option<u64>, _: Unit) -> Box<dyn Task> {
        eprintln!("graft: {label} ...");
        Box::new(LineTask {
            label: label.to_string(),
            started: std::time::Instant::now(),
        })
    }
}

impl Task for LineTask {
    fn set(&mut self, _: u64) {}
    fn set_total(&mut self, _: u64) {}
    fn message(&mut self, _: &str) {}
    fn finish(self: Box<Self>, summary: &str) {
        eprintln!(
            "graft: {}: {summary} ({:.1} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}
