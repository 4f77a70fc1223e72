//! The live progress line on stderr: only when stderr is a terminal and not `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::conn::Ctx;
use super::stats::Counters;

/// The progress display, if shown.
pub struct Progress {
    shown: Option<(ProgressBar, Arc<AtomicBool>, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    /// Starts the display: a bar of connections, then of messages sent when the count is
    /// known (a spinner otherwise), with rates, messages in flight and errors.
    pub fn start(ctx: &Arc<Ctx>, quiet: bool, connections: u64, messages: Option<u64>) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { shown: None };
        }
        let bar = ProgressBar::with_draw_target(Some(connections), ProgressDrawTarget::stderr());
        let bar_style =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let spinner =
            ProgressStyle::with_template("{elapsed_precise} {spinner} {pos} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(bar_style.clone());
        bar.set_prefix("connected");
        let running = Arc::new(AtomicBool::new(false));
        let (b, r, ctx) = (bar.clone(), running.clone(), ctx.clone());
        let task = tokio::spawn(async move {
            let tick = Duration::from_millis(250);
            let mut last = (0u64, 0u64);
            let mut switched = false;
            loop {
                tokio::time::sleep(tick).await;
                let c = &ctx.counters;
                let out = Counters::get(&c.published);
                let inn = Counters::get(&c.received);
                let errors = Counters::get(&c.connect_errors) + Counters::get(&c.lost_connections);
                let in_flight = out.saturating_sub(Counters::get(&c.completed));
                let secs = tick.as_secs_f64();
                let rate_out = (out - last.0) as f64 / secs;
                let rate_in = (inn - last.1) as f64 / secs;
                last = (out, inn);
                if r.load(Relaxed) {
                    if !switched {
                        switched = true;
                        match messages {
                            Some(n) => b.set_length(n),
                            None => {
                                b.set_style(spinner.clone());
                                b.unset_length();
                            }
                        }
                        b.set_prefix("sent");
                    }
                    b.set_position(out);
                } else {
                    b.set_position(Counters::get(&c.connected));
                }
                b.set_message(format!(
                    "| out {rate_out:.0}/s | in {rate_in:.0}/s | received {inn} | in flight {in_flight} | errors {errors}"
                ));
            }
        });
        Progress {
            shown: Some((bar, running, task)),
        }
    }

    /// Connections are up: the display turns to messages.
    pub fn running(&self) {
        if let Some((_, running, _)) = &self.shown {
            running.store(true, Relaxed);
        }
    }

    /// Removes the display.
    pub fn finish(self) {
        if let Some((bar, _, task)) = self.shown {
            task.abort();
            bar.finish_and_clear();
        }
    }
}
