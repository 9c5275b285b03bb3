//! `shardq watch`: a live view of the cluster.
//!
//! On a terminal it is a full-screen view (ratatui on crossterm) that fits any size: a pinned
//! header (cluster, epoch, brokers with their state, shards led/held and msgs/s), one line with a
//! progress bar per move in flight, and a scrolling list of shards (Tab: finished moves). Every
//! line is cut at the terminal's width, never wrapped. Keys: Up/Down (k/j), PgUp/PgDn,
//! Home/End scroll; Tab switches the list; q, Esc or Ctrl-C quits. The terminal is restored on
//! exit, on error and on panic.
//!
//! When stdout is not a terminal (or with `--once`) it prints the status as text, as
//! `shardq status` does, every interval (or once).
//!
//! Messages per second are computed here, from the shards' end offsets between refreshes (over
//! the last few seconds), per shard and per broker leading it.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use shardq_protocol::{BrokerStatus, ClusterStatus, MovePhase, MoveProgress};

use super::{client, fetch_status, human_bytes, move_percent, render_status, report_cells};

/// `shardq watch`: the full-screen view on a terminal; text otherwise or with `once`.
pub async fn watch(bootstrap: &str, interval: Duration, once: bool) -> Result<()> {
    if once {
        let st = fetch_status(&client(bootstrap).await?).await?;
        print!("shardq watch {bootstrap}\n\n{}", render_status(&st));
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        return plain(bootstrap, interval).await;
    }
    tui(bootstrap, interval).await
}

/// Not a terminal: the status as text, separated by `---`, every `interval` until Ctrl-C.
async fn plain(bootstrap: &str, interval: Duration) -> Result<()> {
    use std::io::Write;
    let client = client(bootstrap).await?;
    loop {
        let frame = match fetch_status(&client).await {
            Ok(st) => render_status(&st),
            Err(e) => format!("cannot get the status from {bootstrap}: {e:#}\n"),
        };
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "---\nshardq watch {bootstrap} (every {} ms; Ctrl-C to stop)\n\n{frame}",
            interval.as_millis()
        )?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// How far back the msgs/s figures look.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// Messages per second per shard and per broker, from end-offset deltas between refreshes.
#[derive(Default)]
struct Rates {
    /// (when, end offset per shard) of recent refreshes, oldest first.
    history: VecDeque<(Instant, BTreeMap<String, u64>)>,
    per_shard: BTreeMap<String, f64>,
    per_broker: BTreeMap<u32, f64>,
    /// None until two refreshes have been seen.
    total: Option<f64>,
}

impl Rates {
    fn update(&mut self, at: Instant, st: &ClusterStatus) {
        let ends: BTreeMap<String, u64> = st
            .shards
            .iter()
            .filter_map(|(r, rep)| Some((r.shard.to_string(), rep.as_ref()?.end_offset)))
            .collect();
        self.history.push_back((at, ends));
        while self.history.len() > 2 && at.duration_since(self.history[1].0) >= RATE_WINDOW {
            self.history.pop_front();
        }
        self.per_shard.clear();
        self.per_broker.clear();
        self.total = None;
        let (Some((t0, before)), Some((t1, now))) = (self.history.front(), self.history.back())
        else {
            return;
        };
        let dt = t1.duration_since(*t0).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        for (route, _) in &st.shards {
            let name = route.shard.to_string();
            let (Some(end), Some(prev)) = (now.get(&name), before.get(&name)) else {
                continue;
            };
            let rate = end.saturating_sub(*prev) as f64 / dt;
            if let Some(o) = &route.owner {
                *self.per_broker.entry(o.id).or_default() += rate;
            }
            self.per_shard.insert(name, rate);
        }
        for b in &st.brokers {
            self.per_broker.entry(b.addr.id).or_default();
        }
        self.total = Some(self.per_shard.values().sum());
    }
}

/// A rate in a few characters: `0`, `950`, `12.3k`, `1.2M`; `-` while unknown.
fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r < 999.5 => format!("{r:.0}"),
        Some(r) if r < 999_500.0 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{:.1}M", r / 1e6),
    }
}

/// Which list fills the bottom of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    Shards,
    Finished,
}

/// Everything the screen shows.
struct App {
    bootstrap: String,
    interval: Duration,
    status: Option<ClusterStatus>,
    /// The last refresh failed: why (the last good status stays on screen).
    error: Option<String>,
    rates: Rates,
    /// Refreshes received, shown in the footer (a test waits on it for a fresh frame).
    updates: u64,
    view: View,
    /// First list row shown.
    scroll: usize,
    /// List rows visible at the last draw (PgUp/PgDn step).
    page: usize,
}

impl App {
    fn new(bootstrap: &str, interval: Duration) -> App {
        App {
            bootstrap: bootstrap.to_string(),
            interval,
            status: None,
            error: None,
            rates: Rates::default(),
            updates: 0,
            view: View::Shards,
            scroll: 0,
            page: 1,
        }
    }

    fn refreshed(&mut self, at: Instant, st: Result<ClusterStatus>) {
        self.updates += 1;
        match st {
            Ok(st) => {
                self.rates.update(at, &st);
                self.status = Some(st);
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// Handles a key; false to quit.
    fn key(&mut self, k: KeyEvent) -> bool {
        if k.kind == KeyEventKind::Release {
            return true;
        }
        let page = self.page.max(1);
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return false,
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll += 1,
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::PageDown | KeyCode::Char(' ') => self.scroll += page,
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = usize::MAX / 2,
            KeyCode::Tab | KeyCode::BackTab => {
                self.view = match self.view {
                    View::Shards => View::Finished,
                    View::Finished => View::Shards,
                };
                self.scroll = 0;
            }
            _ => {}
        }
        true
    }
}

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().add_modifier(Modifier::DIM);

fn state_style(s: BrokerStatus) -> Style {
    match s {
        BrokerStatus::Up => Style::new().fg(Color::Green),
        BrokerStatus::Down => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        BrokerStatus::Leaving => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
    }
}

/// Width of one broker cell in the header, and the gap between cells.
const CELL: usize = 25;
const GAP: usize = 2;

/// The pinned header: a title line, then the brokers in as many columns as fit, the last
/// autoscaler decision, the reasons of degraded brokers and the last refresh error. At most
/// `max_rows` lines.
fn header(app: &App, width: usize, max_rows: usize) -> Vec<Line<'static>> {
    let mut title = vec![
        Span::styled("shardq watch", BOLD),
        Span::raw(format!(" {}", app.bootstrap)),
    ];
    let Some(st) = &app.status else {
        let mut lines = vec![Line::from(title)];
        lines.push(Line::styled(
            app.error
                .as_deref()
                .map_or("waiting for the first status...".to_string(), |e| {
                    format!("cannot get the status: {e}")
                }),
            Style::new().fg(Color::Red),
        ));
        return lines;
    };
    let count = |s: BrokerStatus| st.brokers.iter().filter(|b| b.status == s).count();
    let under = st
        .shards
        .iter()
        .filter(|(r, _)| r.isr.len() < r.replicas.len())
        .count();
    let offline = st.shards.iter().filter(|(r, _)| r.owner.is_none()).count();
    title.push(Span::raw(format!(
        " │ epoch {} │ {} brokers",
        st.epoch,
        st.brokers.len()
    )));
    for (s, n) in [
        (BrokerStatus::Down, count(BrokerStatus::Down)),
        (BrokerStatus::Leaving, count(BrokerStatus::Leaving)),
    ] {
        if n > 0 {
            title.push(Span::styled(format!(" {n} {s}"), state_style(s)));
        }
    }
    title.push(Span::raw(format!(" │ {} shards", st.shards.len())));
    if under > 0 {
        title.push(Span::styled(
            format!(" {under} under-replicated"),
            Style::new().fg(Color::Yellow),
        ));
    }
    if offline > 0 {
        title.push(Span::styled(
            format!(" {offline} offline"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    title.push(Span::raw(format!(" │ {} msgs/s", rate(app.rates.total))));
    let mut lines = vec![Line::from(title)];

    // Shards led and replicas held per broker.
    let mut per_broker: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (route, _) in &st.shards {
        if let Some(o) = &route.owner {
            per_broker.entry(o.id).or_default().0 += 1;
        }
        for b in &route.replicas {
            per_broker.entry(*b).or_default().1 += 1;
        }
    }
    let cols = ((width + GAP) / (CELL + GAP)).max(1);
    let legend = format!(
        "{:>2} {:<7} {:>2}/{:<4} {:>6}",
        "id", "state", "led", "held", "msg/s"
    );
    lines.push(Line::styled(
        vec![legend; cols.min(st.brokers.len().max(1))].join(&" ".repeat(GAP)),
        DIM,
    ));
    // Room for the brokers, keeping a line for the last autoscaler decision.
    let reserved = 1 + usize::from(!st.scaling.is_empty());
    let room = max_rows.saturating_sub(lines.len() + reserved).max(1);
    let rows = st.brokers.chunks(cols).count();
    for (i, chunk) in st.brokers.chunks(cols).enumerate() {
        if i + 1 == room && rows > room {
            lines.push(Line::styled(
                format!(
                    "... and {} more brokers (a taller terminal shows them)",
                    st.brokers.len() - i * cols
                ),
                DIM,
            ));
            break;
        }
        let mut spans = Vec::new();
        for (j, b) in chunk.iter().enumerate() {
            if j > 0 {
                spans.push(Span::raw(" ".repeat(GAP)));
            }
            let (led, held) = per_broker.get(&b.addr.id).copied().unwrap_or_default();
            let mut style = state_style(b.status);
            if b.degraded.is_some() {
                style = style.fg(Color::Magenta);
            }
            spans.push(Span::raw(format!("{:>2} ", b.addr.id)));
            let state = if b.degraded.is_some() {
                format!("{}!", b.status)
            } else {
                b.status.to_string()
            };
            spans.push(Span::styled(format!("{state:<7}"), style));
            spans.push(Span::raw(format!(
                " {led:>2}/{held:<4} {:>6}",
                rate(app.rates.per_broker.get(&b.addr.id).copied())
            )));
        }
        lines.push(Line::from(spans));
    }
    if let Some(d) = st.scaling.last() {
        if lines.len() + 1 < max_rows {
            lines.push(Line::styled(
                format!("autoscaler {}", super::scaling_line(d)),
                Style::new().fg(Color::Cyan),
            ));
        }
    }
    for b in st.brokers.iter().filter(|b| b.degraded.is_some()) {
        if lines.len() + 1 >= max_rows {
            break;
        }
        lines.push(Line::styled(
            format!(
                "broker {} degraded: {}",
                b.addr.id,
                b.degraded.as_deref().unwrap_or_default()
            ),
            Style::new().fg(Color::Magenta),
        ));
    }
    if let Some(e) = &app.error {
        lines.push(Line::styled(
            format!("cannot refresh (showing the last status): {e}"),
            Style::new().fg(Color::Red),
        ));
    }
    lines.truncate(max_rows.max(1));
    lines
}

/// `#12   T:P3  1→3  copying    [██████░░░░]  63%  1.2 MiB  lag 2000`, cut to `width`.
fn move_line(m: &MoveProgress, shard_w: usize, width: usize) -> Line<'static> {
    let head = format!(
        "#{:<4} {:<shard_w$} {:>2}→{:<2} {:<10} ",
        m.move_id,
        m.shard.to_string(),
        m.from.map_or("-".into(), |f| f.to_string()),
        m.to,
        m.phase.as_str(),
    );
    let pct = move_percent(m);
    let tail = format!(
        " {pct:>3}% {:>9}  lag {}",
        human_bytes(m.bytes_copied),
        m.lag
    );
    let room = width.saturating_sub(head.chars().count() + tail.chars().count() + 2);
    let bar = room.min(50);
    let mut spans = vec![Span::raw(head)];
    if bar >= 5 {
        let filled = bar * pct as usize / 100;
        spans.push(Span::raw("["));
        spans.push(Span::styled(
            "█".repeat(filled),
            Style::new().fg(Color::Cyan),
        ));
        spans.push(Span::styled("░".repeat(bar - filled), DIM));
        spans.push(Span::raw("]"));
    }
    spans.push(Span::styled(tail, BOLD));
    Line::from(spans)
}

/// The moves section: a title line, then one line per move in flight (all of them while they
/// fit in `max_rows`; else as many as fit and a count of the rest).
fn moves(app: &App, width: usize, max_rows: usize) -> Vec<Line<'static>> {
    let Some(st) = &app.status else {
        return Vec::new();
    };
    let active: Vec<&MoveProgress> = st.moves.iter().filter(|m| !m.phase.is_finished()).collect();
    let count = |p: MovePhase| st.moves.iter().filter(|m| m.phase == p).count();
    let mut title = vec![Span::styled(
        format!("moves in flight: {}", active.len()),
        BOLD,
    )];
    title.push(Span::styled(
        format!(
            " │ finished: {} done, {} failed, {} rolled back (Tab lists them)",
            count(MovePhase::Done),
            count(MovePhase::Failed),
            count(MovePhase::RolledBack)
        ),
        DIM,
    ));
    let mut lines = vec![Line::from(title)];
    let shard_w = active
        .iter()
        .map(|m| m.shard.to_string().len())
        .max()
        .unwrap_or(0)
        .clamp(6, 24);
    let room = max_rows.saturating_sub(1);
    for (i, m) in active.iter().enumerate() {
        if i + 1 == room && active.len() > room {
            lines.push(Line::styled(
                format!(
                    "... and {} more moves in flight (a taller terminal shows them)",
                    active.len() - i
                ),
                DIM,
            ));
            break;
        }
        lines.push(move_line(m, shard_w, width));
    }
    lines
}

/// The scrolling list: its title line (with column names) and every row.
fn list(app: &App, width: usize) -> (Line<'static>, Vec<Line<'static>>) {
    let Some(st) = &app.status else {
        return (Line::raw(""), Vec::new());
    };
    match app.view {
        View::Shards => shard_rows(app, st, width),
        View::Finished => finished_rows(st),
    }
}

fn shard_rows(app: &App, st: &ClusterStatus, width: usize) -> (Line<'static>, Vec<Line<'static>>) {
    let down = super::down_brokers(st);
    let wide = width >= 120;
    let shard_w = st
        .shards
        .iter()
        .map(|(r, _)| r.shard.to_string().len())
        .max()
        .unwrap_or(5)
        .clamp(5, 24);
    let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let row = |c: [&str; 10]| {
        let mut s = format!(
            "{:<shard_w$} {:<7} {:<10} {:<10} {:>10} {:>8} {:>7}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        );
        if wide {
            s.push_str(&format!(" {:>10} {:>10}  {}", c[7], c[8], c[9]));
        }
        s
    };
    let title = Line::styled(
        row([
            "shard",
            "leader",
            "replicas",
            "in sync",
            "end",
            "max lag",
            "msg/s",
            "committed",
            "bytes",
            "groups (committed/lag)",
        ]),
        BOLD.add_modifier(Modifier::UNDERLINED),
    );
    let rows = st
        .shards
        .iter()
        .map(|(r, rep)| {
            let name = r.shard.to_string();
            let (leader, mut style) = match &r.owner {
                None => (
                    "offline".to_string(),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                Some(o) if down.contains(&o.id) => (
                    format!("{} down", o.id),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ),
                Some(o) => (o.id.to_string(), Style::new()),
            };
            let leader = if r.moving {
                style = style.fg(Color::Cyan);
                format!("{leader}*")
            } else {
                leader
            };
            if r.isr.len() < r.replicas.len() && r.owner.is_some() {
                style = style.fg(Color::Yellow);
            }
            let (end, hw, lag, bytes, groups) = report_cells(rep.as_ref(), human_bytes);
            let msgs = rate(app.rates.per_shard.get(&name).copied());
            Line::styled(
                row([
                    &name,
                    &leader,
                    &ids(&r.replicas),
                    &ids(&r.isr),
                    &end,
                    &lag,
                    &msgs,
                    &hw,
                    &bytes,
                    &groups,
                ]),
                style,
            )
        })
        .collect();
    (title, rows)
}

fn finished_rows(st: &ClusterStatus) -> (Line<'static>, Vec<Line<'static>>) {
    let title = Line::styled(
        format!(
            "{:<5} {:<16} {:>5} {:<11} {:>9} {:>10} {:>9} {:>9}  error",
            "move", "shard", "route", "phase", "records", "bytes", "took ms", "pause ms"
        ),
        BOLD.add_modifier(Modifier::UNDERLINED),
    );
    let rows = st
        .moves
        .iter()
        .rev()
        .filter(|m| m.phase.is_finished())
        .map(|m| {
            let style = match m.phase {
                MovePhase::Done => Style::new(),
                MovePhase::Failed => Style::new().fg(Color::Red),
                _ => Style::new().fg(Color::Yellow),
            };
            Line::styled(
                format!(
                    "#{:<4} {:<16} {:>2}→{:<2} {:<11} {:>9} {:>10} {:>9} {:>9}  {}",
                    m.move_id,
                    m.shard.to_string(),
                    m.from.map_or("-".into(), |f| f.to_string()),
                    m.to,
                    m.phase.as_str(),
                    m.records_copied,
                    human_bytes(m.bytes_copied),
                    m.finished_ms
                        .map_or("-".into(), |f| f.saturating_sub(m.started_ms).to_string()),
                    m.write_pause_ms.map_or("-".into(), |p| p.to_string()),
                    m.error.as_deref().unwrap_or_default()
                ),
                style,
            )
        })
        .collect();
    (title, rows)
}

fn footer(app: &App, shown: (usize, usize, usize)) -> Line<'static> {
    let other = match app.view {
        View::Shards => "finished moves",
        View::Finished => "shards",
    };
    let (first, last, total) = shown;
    Line::styled(
        format!(
            "update #{} every {} ms │ rows {}-{} of {total} │ q quit │ ↑↓ PgUp PgDn Home End │ Tab {other}",
            app.updates,
            app.interval.as_millis(),
            if total == 0 { 0 } else { first + 1 },
            last,
        ),
        Style::new().fg(Color::Black).bg(Color::Gray),
    )
}

/// Draws the whole screen: header, moves, list, footer, each cut to the frame's width.
fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    let (w, h) = (area.width as usize, area.height as usize);
    // The header keeps at most a third of a short screen for its broker rows.
    let head = header(app, w, (h / 3).max(3));
    // The moves get what they need, leaving the footer and a list title plus a row or two.
    let mv = moves(app, w, h.saturating_sub(head.len() + 3).max(1));
    let [head_area, moves_area, list_area, foot_area] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Length(mv.len() as u16),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(head), head_area);
    f.render_widget(Paragraph::new(mv), moves_area);
    let (title, rows) = list(app, w);
    let page = (list_area.height as usize).saturating_sub(1);
    app.page = page.max(1);
    app.scroll = app.scroll.min(rows.len().saturating_sub(page));
    let shown: Vec<Line> = rows.iter().skip(app.scroll).take(page).cloned().collect();
    let last = app.scroll + shown.len();
    if list_area.height > 0 {
        let [t, r] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(list_area);
        f.render_widget(Paragraph::new(title), t);
        f.render_widget(Paragraph::new(shown), r);
    }
    f.render_widget(
        Paragraph::new(footer(app, (app.scroll, last, rows.len()))),
        foot_area,
    );
}

/// Puts the terminal back (raw mode off, main screen, cursor shown). Safe to call twice.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Restores the terminal when dropped: on return, on error, and while unwinding.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads block) until `stop`.
fn spawn_input(
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match crossterm::event::poll(Duration::from_millis(100)) {
                Ok(true) => match crossterm::event::read() {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    })
}

async fn tui(bootstrap: &str, interval: Duration) -> Result<()> {
    let client = client(bootstrap).await?;
    // Statuses are fetched on a task of their own, so keys are answered while one is awaited.
    let (st_tx, mut st_rx) = tokio::sync::mpsc::channel::<(Instant, Result<ClusterStatus>)>(1);
    let fetcher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let st = match tokio::time::timeout(
                interval.max(Duration::from_secs(5)),
                fetch_status(&client),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no answer within 5 s")),
            };
            if st_tx.send((Instant::now(), st)).await.is_err() {
                return;
            }
        }
    });

    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
    let _guard = TerminalGuard;
    crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::cursor::Hide
    )?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;

    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let input = spawn_input(ev_tx, stop.clone());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut app = App::new(bootstrap, interval);
    let result: Result<()> = async {
        terminal.draw(|f| draw(f, &mut app))?;
        loop {
            tokio::select! {
                Some((at, st)) = st_rx.recv() => app.refreshed(at, st),
                ev = ev_rx.recv() => match ev {
                    Some(Event::Key(k)) => {
                        if !app.key(k) {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                    // The input thread stopped: the terminal is gone.
                    None => return Ok(()),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
            terminal.draw(|f| draw(f, &mut app))?;
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    fetcher.abort();
    let _ = input.join();
    drop(terminal);
    restore_terminal();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use shardq_protocol::{BrokerAddr, BrokerInfo, ShardId, ShardReport, ShardRoute, TopicInfo};

    fn status(brokers: u32, shards: u32, moves: u64) -> ClusterStatus {
        let addr = |id: u32| BrokerAddr {
            id,
            addr: format!("127.0.0.1:{}", 9000 + id),
        };
        ClusterStatus {
            epoch: 42,
            brokers: (1..=brokers)
                .map(|id| BrokerInfo {
                    addr: addr(id),
                    weight: 1,
                    status: match id {
                        2 => BrokerStatus::Down,
                        3 => BrokerStatus::Leaving,
                        _ => BrokerStatus::Up,
                    },
                    last_seen_ms: 0,
                    shards: 1,
                    degraded: None,
                })
                .collect(),
            topics: vec![TopicInfo {
                name: "T".into(),
                partitions: shards,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            }],
            shards: (1..=shards)
                .map(|p| {
                    let owner = 1 + p % brokers;
                    (
                        ShardRoute {
                            shard: ShardId::new("T", p),
                            owner: Some(addr(owner)),
                            moving: false,
                            leader_epoch: 1,
                            replicas: vec![owner],
                            isr: vec![owner],
                        },
                        None::<ShardReport>,
                    )
                })
                .collect(),
            moves: (1..=moves)
                .map(|i| MoveProgress {
                    move_id: i,
                    shard: ShardId::new("T", i as u32),
                    from: Some(1),
                    to: 2,
                    phase: if i % 3 == 0 {
                        MovePhase::Done
                    } else {
                        MovePhase::Copying
                    },
                    records_copied: 300 * i,
                    bytes_copied: 30_000 * i,
                    lag: 1000,
                    started_ms: 0,
                    finished_ms: None,
                    write_pause_ms: None,
                    error: None,
                })
                .collect(),
            scaling: vec![shardq_protocol::ScalingDecision {
                time_ms: 1_790_000_000_000 + 3_723_000,
                action: "add".into(),
                reason: "average 25000 msgs/s per broker above 20000 for 10 s".into(),
                brokers: brokers - 1,
                broker: Some(brokers),
            }],
            pending_drops: vec![(3, ShardId::new("orders", 2))],
        }
    }

    fn screen(app: &mut App, w: u16, h: u16) -> Vec<String> {
        let mut t = ratatui::Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_header_and_every_move_in_flight_fit_a_small_terminal() {
        let mut app = App::new("127.0.0.1:7400", Duration::from_millis(500));
        app.refreshed(Instant::now(), Ok(status(5, 48, 9)));
        for (w, h) in [(80, 24), (200, 50), (60, 16)] {
            let rows = screen(&mut app, w, h);
            let text = rows.join("\n");
            assert!(rows[0].starts_with("shardq watch 127.0.0.1:7400"), "{text}");
            assert!(text.contains("down"), "{text}");
            if w >= 80 {
                assert!(text.contains("leaving"), "{text}");
            }
            for i in (1..=9u64).filter(|i| i % 3 != 0) {
                assert!(
                    rows.iter().any(|r| r.contains(&format!("#{i:<4} T:P{i} "))),
                    "move {i} missing at {w}x{h}:\n{text}"
                );
            }
            assert!(text.contains(" 23% "), "{text}");
            assert!(
                rows.iter()
                    .any(|r| r.starts_with("autoscaler ") && r.contains(" add broker 5 ")),
                "the last autoscaler decision is missing at {w}x{h}:\n{text}"
            );
            assert!(rows[h as usize - 1].starts_with("update #1 "), "{text}");
        }
    }

    #[test]
    fn keys_scroll_the_list_and_quit() {
        let mut app = App::new("x", Duration::from_millis(500));
        app.refreshed(Instant::now(), Ok(status(3, 60, 0)));
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        let rows = screen(&mut app, 80, 24);
        assert!(rows.iter().any(|r| r.starts_with("T:P1 ")));
        assert!(app.key(key(KeyCode::PageDown)));
        let rows = screen(&mut app, 80, 24);
        assert!(!rows.iter().any(|r| r.starts_with("T:P1 ")));
        assert!(app.key(key(KeyCode::End)));
        let rows = screen(&mut app, 80, 24);
        assert!(rows.iter().any(|r| r.starts_with("T:P60 ")), "{rows:#?}");
        assert!(app.key(key(KeyCode::Home)));
        assert_eq!(app.scroll, 0);
        assert!(!app.key(key(KeyCode::Char('q'))));
        assert!(!app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    }

    #[test]
    fn rates_come_from_end_offset_deltas() {
        let mut st = status(1, 2, 0);
        let report = |end| ShardReport {
            shard: ShardId::new("T", 1),
            state: shardq_protocol::ShardState::Active,
            epoch: 1,
            start_offset: 0,
            end_offset: end,
            bytes: 0,
            groups: vec![],
            role: shardq_protocol::ReplicaRole::Leader,
            leader_epoch: 1,
            high_watermark: end,
            followers: vec![],
        };
        let mut r = Rates::default();
        let t0 = Instant::now();
        st.shards[0].1 = Some(report(100));
        r.update(t0, &st);
        assert_eq!(r.total, None);
        st.shards[0].1 = Some(report(1100));
        r.update(t0 + Duration::from_secs(2), &st);
        assert_eq!(r.total, Some(500.0));
        assert_eq!(r.per_broker.get(&1), Some(&500.0));
        assert_eq!(rate(Some(1234.0)), "1.2k");
    }
}
