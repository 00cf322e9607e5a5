//! `shmq top [DIR]`: every queue in a directory, refreshed live — rates, depth, lag, dead
//! participants. `q` (or Esc, or Ctrl-C) quits.
//!
//! Split for testing: [`Sampler`] inspects the queues and computes rates, [`draw`] renders a
//! [`Screen`] on any ratatui backend (the tests use `TestBackend`), `run` owns the terminal.

use crate::scan::shmq_files;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory whose queues to show.
    #[arg(default_value_os_t = crate::default_dir())]
    dir: PathBuf,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    interval: f64,
}

/// One queue's line on the screen.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub name: String,
    pub kind: &'static str,
    pub depth: u64,
    pub capacity: u64,
    pub sent_per_sec: f64,
    pub received_per_sec: f64,
    /// The largest subscriber lag (channels), else zero.
    pub max_lag: u64,
    pub alive: usize,
    pub dead: usize,
    /// Messages dead participants hold (what recovery will undo).
    pub dead_holds: u64,
    /// Why the file could not be inspected.
    pub error: Option<String>,
}

/// What one refresh shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    pub dir: PathBuf,
    pub rows: Vec<QueueRow>,
}

/// Inspects a directory's queues, remembering the previous counters for rates.
#[derive(Default)]
pub struct Sampler {
    previous: HashMap<PathBuf, (Instant, u64, u64)>,
}

impl Sampler {
    pub fn sample(&mut self, dir: &Path) -> crate::Result<Screen> {
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut seen = HashMap::new();
        for path in shmq_files(dir)? {
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let report = match shmq::inspect::inspect(&path) {
                Ok(r) => r,
                Err(e) => {
                    rows.push(QueueRow {
                        name,
                        kind: "?",
                        depth: 0,
                        capacity: 0,
                        sent_per_sec: 0.0,
                        received_per_sec: 0.0,
                        max_lag: 0,
                        alive: 0,
                        dead: 0,
                        dead_holds: 0,
                        error: Some(e.to_string()),
                    });
                    continue;
                }
            };
            let (sent, received) = (report.totals.sent, report.totals.received);
            let (sent_per_sec, received_per_sec) = match self.previous.get(&path) {
                Some(&(at, s0, r0)) => {
                    let secs = now.duration_since(at).as_secs_f64().max(1e-9);
                    (
                        sent.saturating_sub(s0) as f64 / secs,
                        received.saturating_sub(r0) as f64 / secs,
                    )
                }
                None => (0.0, 0.0),
            };
            seen.insert(path.clone(), (now, sent, received));
            rows.push(QueueRow {
                name,
                kind: report.kind.name(),
                depth: report.ring.depth,
                capacity: report.geometry.capacity,
                sent_per_sec,
                received_per_sec,
                max_lag: report.subscribers.iter().map(|s| s.lag).max().unwrap_or(0),
                alive: report.alive(),
                dead: report.dead(),
                dead_holds: report
                    .participants
                    .iter()
                    .filter(|p| !p.alive)
                    .map(|p| p.holds.total())
                    .sum(),
                error: None,
            });
        }
        self.previous = seen;
        Ok(Screen {
            dir: dir.to_path_buf(),
            rows,
        })
    }
}

/// Renders one screen.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let [table_area, help_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    let header = Row::new([
        "QUEUE",
        "KIND",
        "DEPTH",
        "CAPACITY",
        "SENT/S",
        "RECV/S",
        "MAX LAG",
        "ALIVE",
        "DEAD",
        "DEAD HOLD",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = screen.rows.iter().map(|r| match &r.error {
        Some(e) => Row::new(vec![r.name.clone(), format!("error: {e}")]),
        None => {
            let row = Row::new(vec![
                r.name.clone(),
                r.kind.to_string(),
                r.depth.to_string(),
                r.capacity.to_string(),
                format!("{:.0}", r.sent_per_sec),
                format!("{:.0}", r.received_per_sec),
                r.max_lag.to_string(),
                r.alive.to_string(),
                r.dead.to_string(),
                r.dead_holds.to_string(),
            ]);
            if r.dead > 0 {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        }
    });
    let widths = [
        Constraint::Min(16),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(9),
    ];
    let title = format!(
        " shmq top: {} ({} queues) ",
        screen.dir.display(),
        screen.rows.len()
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title));
    frame.render_widget(table, table_area);
    frame.render_widget(
        Paragraph::new(Line::from(
            "q quit  (rows of queues with dead participants are highlighted)",
        )),
        help_area,
    );
}

fn quit_requested(timeout: Duration) -> std::io::Result<bool> {
    if !event::poll(timeout)? {
        return Ok(false);
    }
    Ok(match event::read()? {
        Event::Key(key) if key.kind == KeyEventKind::Press => {
            matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    })
}

pub fn run(args: Args) -> crate::Result {
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "--interval needs a positive number of seconds, not {}",
                args.interval
            )
        })?;
    // Fail before taking over the terminal if the directory cannot be read.
    let mut sampler = Sampler::default();
    let mut screen = sampler.sample(&args.dir)?;
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> crate::Result {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                screen = sampler.sample(&args.dir)?;
                terminal.draw(|frame| draw(frame, &screen))?;
                next = Instant::now() + interval;
            }
            if quit_requested(next.saturating_duration_since(Instant::now()))? {
                return Ok(());
            }
        }
    })();
    ratatui::try_restore()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn rendered(screen: &Screen) -> String {
        let mut terminal = Terminal::new(TestBackend::new(110, 10)).unwrap();
        terminal.draw(|frame| draw(frame, screen)).unwrap();
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        let cells: Vec<&str> = buffer.content().iter().map(|c| c.symbol()).collect();
        cells
            .chunks(width)
            .map(|line| line.concat() + "\n")
            .collect()
    }

    /// Real queues in a temporary directory, sampled twice so that rates appear: one pipeline
    /// with messages and a live producer, one channel with a lagging subscriber.
    #[test]
    fn top_shows_every_queue_with_depth_rates_and_lag() {
        let dir = std::env::temp_dir().join(format!("shmq-top-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("not-a-queue"), b"hello").unwrap();
        let jobs =
            shmq::Pipeline::create(dir.join("jobs"), &shmq::PipelineOptions::new().capacity(64))
                .unwrap();
        let producer = jobs.producer().unwrap();
        let events =
            shmq::PubSub::create(dir.join("events"), &shmq::PubSubOptions::new().capacity(16))
                .unwrap();
        let publisher = events.publisher().unwrap();
        let _slow = events.subscriber(&[]).unwrap();

        let mut sampler = Sampler::default();
        sampler.sample(&dir).unwrap();
        for i in 0..5u8 {
            producer.send(&[i]).unwrap();
            publisher.publish(b"t", &[i]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let screen = sampler.sample(&dir).unwrap();
        let text = rendered(&screen);

        assert!(text.contains("shmq top:"), "{text}");
        assert!(
            !text.contains("not-a-queue"),
            "non-shmq files are skipped: {text}"
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("no row for {name} in\n{text}"))
                .replace('│', " ")
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let jobs_row = line("jobs");
        // QUEUE KIND DEPTH CAPACITY SENT/S RECV/S MAX-LAG ALIVE DEAD DEAD-HOLD
        assert_eq!(&jobs_row[..4], ["jobs", "pipeline", "5", "64"], "{text}");
        assert!(
            jobs_row[4].parse::<f64>().unwrap() > 0.0,
            "a send rate: {text}"
        );
        assert_eq!(&jobs_row[6..10], ["0", "1", "0", "0"], "{text}");
        let events_row = line("events");
        assert_eq!(&events_row[..4], ["events", "pubsub", "5", "16"], "{text}");
        assert_eq!(events_row[6], "5", "the subscriber lags by 5: {text}");
        assert_eq!(&events_row[7..9], ["2", "0"], "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
