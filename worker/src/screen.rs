//! `herd-worker screen`: a full-screen terminal view of what this machine is doing for Herd,
//! like a screensaver: the volunteer's credit and rank, whether it computes or why it is paused,
//! each unit and its progress, and the latest image a unit made (Mandelbrot tiles, flames),
//! drawn with half-block characters, two pixels a cell. Any key leaves it.
//!
//! Drawing is a pure function of the status and the image ([`draw`]), tested on ratatui's test
//! backend; [`run`] only reads the files the worker writes and handles the terminal.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Widget};

use crate::status::{Image, LATEST_IMAGE, STATUS_FILE, StatusReport, human};

/// How often the view re-reads the worker's files.
const REFRESH: Duration = Duration::from_millis(250);

/// Draws the whole view. `status` is `None` when the worker has written none.
pub fn draw(frame: &mut Frame, status: Option<&StatusReport>, image: Option<&Image>, now_ms: u64) {
    let area = frame.area();
    let units = status.map_or(0, |s| s.units.len()) as u16;
    let [header, activity, unit_area, preview, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Length(units.min(8)),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    let title = Style::default().add_modifier(Modifier::BOLD);
    let Some(status) = status else {
        frame.render_widget(
            Paragraph::new(vec![
                Line::styled("Herd", title),
                Line::raw("No status yet: is herd-worker running with this --data-dir?"),
            ]),
            header,
        );
        frame.render_widget(Line::raw("any key to leave"), footer);
        return;
    };
    let who = match &status.team {
        Some(team) => format!("Herd · {} · team {team}", status.volunteer),
        None => format!("Herd · {}", status.volunteer),
    };
    let standing = match &status.standing {
        Some(s) => format!(
            "credit {:.2} · rank {} of {} · {:.2} a day{}",
            s.credit,
            s.rank,
            s.volunteers,
            s.recent_average_credit,
            s.team
                .as_ref()
                .map(|t| format!(" · team rank {} of {}", t.rank, t.teams))
                .unwrap_or_default()
        ),
        None => "credit: not known yet".into(),
    };
    frame.render_widget(
        Paragraph::new(vec![Line::styled(who, title), Line::raw(standing)]),
        header,
    );
    let colour = if status.hold.is_some() {
        Color::Yellow
    } else {
        Color::Green
    };
    frame.render_widget(
        Line::from(vec![
            Span::styled(status.activity(now_ms), Style::default().fg(colour)),
            Span::raw(format!(" · {} finished", status.finished_units)),
        ]),
        activity,
    );
    let rows =
        Layout::vertical(vec![Constraint::Length(1); unit_area.height as usize]).split(unit_area);
    for (unit, row) in status.units.iter().zip(rows.iter()) {
        let label = format!(
            "unit {} · {} fuel · {} s{}",
            unit.unit_id,
            human(unit.fuel_so_far),
            unit.running_secs,
            if unit.paused { " · paused" } else { "" }
        );
        frame.render_widget(
            Gauge::default()
                .ratio(unit.budget_share())
                .label(label)
                .gauge_style(Style::default().fg(Color::Cyan).bg(Color::Black)),
            *row,
        );
    }
    if let Some(image) = image {
        let block = Block::default()
            .borders(Borders::TOP)
            .title(format!("latest image ({} x {})", image.width, image.height));
        let inner = block.inner(preview);
        frame.render_widget(block, preview);
        frame.render_widget(Picture(image), inner);
    }
    frame.render_widget(
        Line::styled("any key to leave", Style::default().fg(Color::DarkGray)),
        footer,
    );
}

/// An image drawn with `▀`: the upper pixel in the foreground, the lower in the background.
struct Picture<'a>(&'a Image);

impl Widget for Picture<'_> {
    fn render(self, area: Rect, buffer: &mut Buffer) {
        let image = self.0;
        if area.width == 0 || area.height == 0 {
            return;
        }
        // Fit the image, keeping its shape (a cell is two pixels tall).
        let scale = (image.width as f64 / f64::from(area.width))
            .max(image.height as f64 / (2.0 * f64::from(area.height)));
        let columns = ((image.width as f64 / scale) as u16).clamp(1, area.width);
        let rows = ((image.height as f64 / (2.0 * scale)) as u16).clamp(1, area.height);
        let left = area.x + (area.width - columns) / 2;
        let sample = |x: u16, y: u32| {
            let px = ((f64::from(x) * scale) as usize).min(image.width - 1);
            let py = ((f64::from(y) * scale) as usize).min(image.height - 1);
            let [r, g, b] = image.pixel(px, py);
            Color::Rgb(r, g, b)
        };
        for row in 0..rows {
            for column in 0..columns {
                let top = sample(column, u32::from(row) * 2);
                let bottom = sample(column, u32::from(row) * 2 + 1);
                if let Some(cell) = buffer.cell_mut((left + column, area.y + row)) {
                    cell.set_symbol("▀").set_fg(top).set_bg(bottom);
                }
            }
        }
    }
}

/// Reads what the worker wrote under `data_dir`.
fn load(data_dir: &Path) -> (Option<StatusReport>, Option<Image>) {
    let status = StatusReport::read(&data_dir.join(STATUS_FILE)).ok();
    let image = std::fs::read(data_dir.join(LATEST_IMAGE))
        .ok()
        .and_then(|bytes| Image::parse_ppm(&bytes));
    (status, image)
}

/// The full-screen view until any key is pressed.
pub fn run(data_dir: &Path) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init().context("open the terminal")?;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let (status, image) = load(data_dir);
            terminal
                .draw(|frame| draw(frame, status.as_ref(), image.as_ref(), crate::now_ms()))
                .context("draw")?;
            if ratatui::crossterm::event::poll(REFRESH).context("read the keyboard")?
                && let ratatui::crossterm::event::Event::Key(_) =
                    ratatui::crossterm::event::read().context("read the keyboard")?
            {
                return Ok(());
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use herd_protocol::{Standing, TeamStanding};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::status::UnitLine;

    fn text(buffer: &Buffer) -> String {
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn status() -> StatusReport {
        StatusReport {
            volunteer: "ada".into(),
            team: Some("engines".into()),
            connected: true,
            hold: None,
            units: vec![UnitLine {
                replica_id: 7,
                unit_id: 3,
                batch_id: 1,
                fuel_so_far: 2_500_000_000,
                fuel_limit: 10_000_000_000,
                paused: false,
                running_secs: 12,
            }],
            standing: Some(Standing {
                volunteer: "ada".into(),
                credit: 12.5,
                recent_average_credit: 1.75,
                rank: 2,
                volunteers: 9,
                team: Some(TeamStanding {
                    name: "engines".into(),
                    credit: 20.0,
                    rank: 1,
                    teams: 3,
                }),
            }),
            finished_units: 4,
            written_ms: 10_000,
            pid: std::process::id(),
        }
    }

    #[test]
    fn the_view_shows_credit_activity_units_and_the_latest_image() {
        let mut terminal = Terminal::new(TestBackend::new(60, 20)).expect("terminal");
        // A 4 x 4 image: red on top, blue below.
        let mut rgb = Vec::new();
        for y in 0..4 {
            for _ in 0..4 {
                rgb.extend_from_slice(if y < 2 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        let image = Image {
            width: 4,
            height: 4,
            rgb,
        };
        let report = status();
        terminal
            .draw(|frame| draw(frame, Some(&report), Some(&image), 10_500))
            .expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let screen = text(&buffer);
        assert!(screen.contains("Herd · ada · team engines"), "{screen}");
        assert!(screen.contains("credit 12.50 · rank 2 of 9"), "{screen}");
        assert!(screen.contains("computing 1 unit · 4 finished"), "{screen}");
        assert!(screen.contains("unit 3 · 2.50 G fuel · 12 s"), "{screen}");
        assert!(screen.contains("latest image (4 x 4)"), "{screen}");
        assert!(screen.contains("any key to leave"), "{screen}");
        let drawn: Vec<(Color, Color)> = buffer
            .content()
            .iter()
            .filter(|cell| cell.symbol() == "▀")
            .map(|cell| (cell.fg, cell.bg))
            .collect();
        assert!(drawn.contains(&(Color::Rgb(255, 0, 0), Color::Rgb(255, 0, 0))));
        assert!(drawn.contains(&(Color::Rgb(0, 0, 255), Color::Rgb(0, 0, 255))));
    }

    #[test]
    fn a_paused_worker_says_why_and_a_missing_one_says_so() {
        let mut terminal = Terminal::new(TestBackend::new(70, 10)).expect("terminal");
        let mut report = status();
        report.hold = Some("the computer is in use (last input 2 s ago)".into());
        report.units[0].paused = true;
        terminal
            .draw(|frame| draw(frame, Some(&report), None, 10_500))
            .expect("draw");
        let screen = text(terminal.backend().buffer());
        assert!(
            screen.contains("paused: the computer is in use"),
            "{screen}"
        );
        assert!(screen.contains("· paused"), "{screen}");
        terminal
            .draw(|frame| draw(frame, None, None, 0))
            .expect("draw");
        let screen = text(terminal.backend().buffer());
        assert!(screen.contains("No status yet"), "{screen}");
    }
}
