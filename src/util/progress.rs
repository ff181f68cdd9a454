//! Progress a person can follow: an indicatif bar where stderr is a terminal, and where it is not
//! (CI, `nohup`, a log file — indicatif then draws nothing at all) a plain line at most every
//! [`PLAIN_LINE_EVERY`] and one at the end, so that a long stage is never silent for minutes and
//! a log is not flooded either. The generator, the trainer and the retrievers' index builds show
//! their progress through it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least time between two plain progress lines.
pub const PLAIN_LINE_EVERY: Duration = Duration::from_secs(20);

/// A progress display (see the module docs). Shared by reference: every method takes `&self`.
pub struct Progress {
    bar: indicatif::ProgressBar,
    plain: Option<Mutex<PlainLines>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("plain", &self.plain.is_some()).finish_non_exhaustive()
    }
}

impl Progress {
    /// Progress of `label` over `len` `unit`s (`len` 0: not known yet, see
    /// [`Progress::set_length`]): a bar on a terminal, plain lines on a stderr that is not one,
    /// nothing unless `show`.
    pub fn new(show: bool, label: &str, len: u64, unit: &str) -> Self {
        if !show {
            return Progress::hidden();
        }
        if !std::io::stderr().is_terminal() {
            return Progress::plain(label, len, unit, PLAIN_LINE_EVERY, Stderr, Instant::now);
        }
        let bar = indicatif::ProgressBar::new(len);
        let template = format!(
            "{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}}, eta {{eta}})"
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        Progress { bar, plain: None }
    }

    /// Shows nothing.
    pub fn hidden() -> Self {
        Progress { bar: indicatif::ProgressBar::hidden(), plain: None }
    }

    /// Plain lines into `out`, at most one per `every` by `clock` (and one at the end).
    fn plain(
        label: &str,
        len: u64,
        unit: &str,
        every: Duration,
        out: impl Write + Send + 'static,
        clock: impl Fn() -> Instant + Send + 'static,
    ) -> Self {
        let started = clock();
        Progress {
            bar: indicatif::ProgressBar::hidden(),
            plain: Some(Mutex::new(PlainLines {
                label: label.to_string(),
                unit: unit.to_string(),
                out: Box::new(out),
                clock: Box::new(clock),
                every,
                started,
                first: None,
                last_line: None,
                pos: 0,
                len,
                msg: String::new(),
                unprinted: false,
                ended: false,
            })),
        }
    }

    fn update(&self, change: impl FnOnce(&mut PlainLines)) {
        if let Some(plain) = &self.plain {
            let mut p = plain.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut p);
            p.unprinted = true;
            p.print(false);
        }
    }

    fn end(&self) {
        if let Some(plain) = &self.plain {
            plain.lock().unwrap_or_else(|e| e.into_inner()).print(true);
        }
    }

    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
        self.update(|p| p.len = len);
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        self.update(|p| p.moved_to(pos));
    }

    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
        self.update(|p| p.moved_to(p.pos + delta));
    }

    /// What is shown after the counts (a loss, a temperature, …).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        self.bar.set_message(msg.clone());
        self.update(|p| p.msg = msg);
    }

    /// Done: the bar stays as it is; a plain display prints its last state.
    pub fn finish(&self) {
        self.bar.finish();
        self.end();
    }

    /// Done: the bar is removed; a plain display prints its last state (a log keeps it).
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
        self.end();
    }

    /// Stopped before the end (an error follows): the bar stays; a plain display prints its last
    /// state.
    pub fn abandon(&self) {
        self.bar.abandon();
        self.end();
    }
}

impl Drop for Progress {
    /// A display dropped without an end (an error path) still prints its last state.
    fn drop(&mut self) {
        self.end();
    }
}

/// stderr through `eprint!`, which a test harness captures (direct writes to the stream it
/// does not).
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The state behind plain progress lines.
struct PlainLines {
    label: String,
    unit: String,
    out: Box<dyn Write + Send>,
    clock: Box<dyn Fn() -> Instant + Send>,
    every: Duration,
    started: Instant,
    /// When and where the first position was set: the rate (and the time left) counts from there,
    /// so a resumed run does not look faster than it is.
    first: Option<(Instant, u64)>,
    last_line: Option<Instant>,
    pos: u64,
    len: u64,
    msg: String,
    /// Changed since the last line.
    unprinted: bool,
    /// The last line was printed by an end: later ends print nothing.
    ended: bool,
}

impl PlainLines {
    fn moved_to(&mut self, pos: u64) {
        self.pos = pos;
        if self.first.is_none() {
            self.first = Some(((self.clock)(), pos));
        }
    }

    /// Print the state when it changed and a line is due (or at the end).
    fn print(&mut self, end: bool) {
        if self.ended || !self.unprinted {
            return;
        }
        let now = (self.clock)();
        let due = self.last_line.is_none_or(|t| now.duration_since(t) >= self.every);
        if !(due || end) {
            return;
        }
        let line = self.line(now);
        // A progress line that cannot be written is not worth failing the work for.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        self.last_line = Some(now);
        self.unprinted = false;
        self.ended = end;
    }

    fn line(&self, now: Instant) -> String {
        let mut line = format!("{}: {}", self.label, self.pos);
        if self.len > 0 {
            let pct = (self.pos as f64 / self.len as f64 * 100.0).min(100.0);
            line.push_str(&format!("/{} {} ({pct:.0}%)", self.len, self.unit));
        } else {
            line.push_str(&format!(" {}", self.unit));
        }
        if !self.msg.is_empty() {
            line.push_str(", ");
            line.push_str(&self.msg);
        }
        line.push_str(&format!("; {} elapsed", clock_time(now.duration_since(self.started))));
        if let Some((t0, p0)) = self.first {
            let (done, secs) = (self.pos.saturating_sub(p0), now.duration_since(t0).as_secs_f64());
            if self.len > self.pos && done > 0 && secs > 0.0 {
                let left = (self.len - self.pos) as f64 * secs / done as f64;
                line.push_str(&format!(
                    ", about {} left",
                    clock_time(Duration::from_secs_f64(left))
                ));
            }
        }
        line
    }
}

/// `1h02m`, `2m05s`, `7s`.
fn clock_time(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    /// A clock the test moves.
    #[derive(Clone)]
    struct Clock(Arc<Mutex<Instant>>);
    impl Clock {
        fn advance(&self, secs: u64) {
            *self.0.lock().unwrap() += Duration::from_secs(secs);
        }
    }

    fn plain(len: u64) -> (Progress, Captured, Clock) {
        let out = Captured::default();
        let clock = Clock(Arc::new(Mutex::new(Instant::now())));
        let c = clock.clone();
        let p = Progress::plain(
            "train",
            len,
            "steps",
            Duration::from_secs(20),
            out.clone(),
            move || *c.0.lock().unwrap(),
        );
        (p, out, clock)
    }

    #[test]
    fn plain_lines_come_at_most_once_per_interval_and_at_the_end() {
        let (p, out, clock) = plain(100);
        p.set_position(0);
        assert_eq!(out.lines(), ["train: 0/100 steps (0%); 0s elapsed"], "the start is shown");
        for _ in 0..19 {
            clock.advance(1);
            p.inc(1);
        }
        assert_eq!(out.lines().len(), 1, "19 s: no second line yet");
        clock.advance(1);
        p.inc(1);
        p.set_message("loss 1.5000");
        let lines = out.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1], "train: 20/100 steps (20%); 20s elapsed, about 1m20s left");
        clock.advance(5);
        p.set_position(30);
        assert_eq!(out.lines().len(), 2);
        clock.advance(100);
        p.finish_and_clear();
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[2],
            "train: 30/100 steps (30%), loss 1.5000; 2m05s elapsed, about 4m51s left"
        );
        p.finish();
        drop(p);
        assert_eq!(out.lines().len(), 3, "one end line, however the display ends");
    }

    #[test]
    fn the_end_line_is_not_repeated_when_nothing_changed() {
        let (p, out, _clock) = plain(0);
        p.inc(3);
        assert_eq!(out.lines(), ["train: 3 steps; 0s elapsed"], "no length: no fraction");
        p.abandon();
        assert_eq!(out.lines().len(), 1, "the state was printed already");
        let (p, out, clock) = plain(10);
        clock.advance(3);
        drop(p);
        assert!(out.lines().is_empty(), "no position ever set: nothing to tell");
    }

    #[test]
    fn a_display_dropped_on_an_error_path_prints_its_last_state() {
        let (p, out, clock) = plain(10);
        p.set_position(1);
        clock.advance(1);
        p.set_position(4);
        drop(p);
        assert_eq!(out.lines().len(), 2);
        assert!(out.lines()[1].starts_with("train: 4/10 steps (40%)"), "{:?}", out.lines());
    }

    #[test]
    fn hidden_shows_nothing_and_clock_times_read_well() {
        let p = Progress::hidden();
        p.set_position(5);
        p.finish();
        assert_eq!(clock_time(Duration::from_secs(7)), "7s");
        assert_eq!(clock_time(Duration::from_secs(125)), "2m05s");
        assert_eq!(clock_time(Duration::from_secs(3720)), "1h02m");
    }
}
