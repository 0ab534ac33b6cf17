//! The progress bar the tool draws on stderr, when stderr is a terminal,
//! for a command that takes more than a moment (a scan of all RAM, an
//! audit of many spaces); erased when the task is done.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmem_gdbstub::target::{Progress, ProgressUnit};

/// A task quicker than this shows no bar.
const SHOW_AFTER: Duration = Duration::from_millis(300);
/// The bar is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: u64 = 24;

/// One task's bar.
struct Bar {
    task: String,
    started: Instant,
    drawn: Option<Instant>,
    /// The furthest report so far (helper threads report out of order).
    done: u64,
}

/// The callback for `DebuggerBuilder::on_progress`, if stderr is a
/// terminal.
pub(crate) fn on_terminal() -> Option<impl Fn(Progress<'_>) + Send + Sync + 'static> {
    let bar: Mutex<Option<Bar>> = Mutex::new(None);
    std::io::stderr()
        .is_terminal()
        .then_some(move |p: Progress<'_>| draw(&bar, p))
}

fn draw(bar: &Mutex<Option<Bar>>, p: Progress<'_>) {
    let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if bar.as_ref().is_none_or(|b| b.task != p.task) {
        *bar = Some(Bar {
            task: p.task.to_string(),
            started: now,
            drawn: None,
            done: 0,
        });
    }
    let Some(b) = bar.as_mut() else { return };
    if p.done >= p.total {
        if b.drawn.is_some() {
            eprint!("\r\x1b[K");
        }
        *bar = None;
        return;
    }
    b.done = b.done.max(p.done);
    if now - b.started < SHOW_AFTER || b.drawn.is_some_and(|t| now - t < REDRAW) {
        return;
    }
    b.drawn = Some(now);
    let total = p.total.max(1);
    let filled = (b.done * WIDTH / total) as usize;
    let amount = match p.unit {
        ProgressUnit::Bytes => format!("{} of {}", gib(b.done), gib(p.total)),
        _ => format!("{} of {}", b.done, p.total),
    };
    eprint!(
        "\r{} [{:<width$}] {:>3}% {amount}\x1b[K",
        b.task,
        "#".repeat(filled),
        b.done * 100 / total,
        width = WIDTH as usize
    );
}

/// Bytes in GiB, one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}
