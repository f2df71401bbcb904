//! User idle time from an X display: the MIT-SCREEN-SAVER extension's `ms_since_user_input`,
//! which the X server resets on every key, button and pointer motion it handles, so the mouse
//! counts as much as the keyboard (BOINC's Linux users report idle detection that misses it).
//!
//! The X connection lives on its own thread: a display that hangs must never stall the
//! governor, which has to pause units within 100 ms of the user's return. The governor asks for
//! a fresh reading and waits at most [`ANSWER_WITHIN`]; a display that does not answer in time
//! counts as "cannot tell", and a lost connection is re-opened at most every [`RECONNECT_EVERY`].

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::screensaver;
use x11rb::rust_connection::RustConnection;

use crate::sources::IdleSource;

/// How long the governor waits for the display to answer before it counts as silent.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(20);

/// How often a lost display is tried again.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(10);

/// Why a display cannot serve as an idle source.
#[derive(Debug, thiserror::Error)]
pub enum X11Error {
    #[error("cannot connect to X display {display:?}: {source}")]
    Connect {
        display: String,
        source: x11rb::errors::ConnectError,
    },
    #[error("X display {display:?} has no MIT-SCREEN-SAVER extension")]
    NoScreenSaver { display: String },
    #[error("X display {display:?}: {detail}")]
    Query { display: String, detail: String },
    #[error("X display {display:?} did not answer within {ANSWER_WITHIN:?}")]
    Silent { display: String },
}

/// An open display and the root window the question is asked about.
struct Display {
    connection: RustConnection,
    root: u32,
}

impl Display {
    fn open(name: &str) -> Result<Self, X11Error> {
        let (connection, screen) =
            x11rb::connect(Some(name)).map_err(|source| X11Error::Connect {
                display: name.to_owned(),
                source,
            })?;
        let query = |detail: String| X11Error::Query {
            display: name.to_owned(),
            detail,
        };
        let present = connection
            .extension_information(screensaver::X11_EXTENSION_NAME)
            .map_err(|e| query(e.to_string()))?;
        if present.is_none() {
            return Err(X11Error::NoScreenSaver {
                display: name.to_owned(),
            });
        }
        let root = connection
            .setup()
            .roots
            .get(screen)
            .or_else(|| connection.setup().roots.first())
            .map(|s| s.root)
            .ok_or_else(|| query("the display has no screens".into()))?;
        Ok(Self { connection, root })
    }

    fn idle(&self) -> Result<Duration, String> {
        let reply = screensaver::query_info(&self.connection, self.root)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        Ok(Duration::from_millis(u64::from(reply.ms_since_user_input)))
    }
}

/// The X11 idle source for one display. See the module documentation.
pub struct X11Idle {
    display: String,
    ask: SyncSender<()>,
    answers: Receiver<Option<(Instant, Duration)>>,
    /// The last answer and when it was measured, for a display that is briefly slow.
    last: Option<(Instant, Duration)>,
}

impl X11Idle {
    /// Connects to the display (`":0"`, or a socket path) and checks that it can tell idle
    /// time; the connection then moves to the source's thread.
    pub fn connect(display: &str) -> Result<Self, X11Error> {
        let first = Display::open(display)?;
        first.idle().map_err(|detail| X11Error::Query {
            display: display.to_owned(),
            detail,
        })?;
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let (answer, answers) = mpsc::sync_channel(4);
        let name = display.to_owned();
        std::thread::Builder::new()
            .name(format!("x11-idle {display}"))
            .spawn(move || serve(name, first, asked, answer))
            .map_err(|e| X11Error::Query {
                display: display.to_owned(),
                detail: format!("cannot start its thread: {e}"),
            })?;
        Ok(Self {
            display: display.to_owned(),
            ask,
            answers,
            last: None,
        })
    }

    /// The displays this machine may have: `$DISPLAY` if set, otherwise every local display
    /// socket in `/tmp/.X11-unix`. None under Wayland, whose X server sees only X clients'
    /// input (the desktop tells logind instead).
    pub fn candidates() -> Vec<String> {
        if std::env::var_os("WAYLAND_DISPLAY").is_some() {
            return Vec::new();
        }
        if let Some(display) = std::env::var("DISPLAY").ok().filter(|d| !d.is_empty()) {
            return vec![display];
        }
        let mut found: Vec<String> = std::fs::read_dir("/tmp/.X11-unix")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let number = name.strip_prefix('X')?;
                number.parse::<u32>().ok().map(|n| format!(":{n}"))
            })
            .collect();
        found.sort();
        found
    }

    /// Which display this is.
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// The source's thread: answers each request with a fresh reading, re-opening the display
/// when the connection is lost. Ends when the source is dropped.
fn serve(
    name: String,
    first: Display,
    asked: Receiver<()>,
    answer: SyncSender<Option<(Instant, Duration)>>,
) {
    let mut display = Some(first);
    let mut last_attempt = Instant::now();
    while asked.recv().is_ok() {
        if display.is_none() && last_attempt.elapsed() >= RECONNECT_EVERY {
            last_attempt = Instant::now();
            match Display::open(&name) {
                Ok(opened) => {
                    tracing::info!("X display {name} is back");
                    display = Some(opened);
                }
                Err(error) => tracing::debug!("{error}"),
            }
        }
        let reading = display.as_ref().and_then(|d| match d.idle() {
            Ok(idle) => Some((Instant::now(), idle)),
            Err(error) => {
                tracing::warn!("X display {name}: {error}; trying again later");
                None
            }
        });
        if reading.is_none() {
            display = None;
        }
        if answer.send(reading).is_err() {
            return;
        }
    }
}

impl IdleSource for X11Idle {
    fn name(&self) -> String {
        format!("X display {} (MIT-SCREEN-SAVER)", self.display)
    }

    fn user_idle(&mut self) -> Option<Duration> {
        // Answers to earlier questions that came too late are still the freshest we had.
        while let Ok(late) = self.answers.try_recv() {
            self.last = late;
        }
        match self.ask.try_send(()) {
            Ok(()) => match self.answers.recv_timeout(ANSWER_WITHIN) {
                Ok(answer) => self.last = answer,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::debug!(
                        "{}",
                        X11Error::Silent {
                            display: self.display.clone()
                        }
                    );
                    return None;
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            },
            // The thread still works on an earlier question: the display is slow.
            Err(TrySendError::Full(())) => return None,
            Err(TrySendError::Disconnected(())) => return None,
        }
        self.last
            .map(|(measured, idle)| idle.saturating_add(measured.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_e2e::xvfb::Xvfb;

    #[test]
    fn the_mouse_moving_on_a_real_x_server_makes_the_user_present() {
        let server = Xvfb::start();
        let mut source = X11Idle::connect(&server.display).expect("Xvfb has MIT-SCREEN-SAVER");
        server.move_the_mouse(10);
        std::thread::sleep(Duration::from_millis(700));
        let away = source.user_idle().expect("the display answers");
        assert!(away >= Duration::from_millis(600), "{away:?}");
        // Idle from the move on, whatever the machine's load (the server counts in whole
        // milliseconds, hence the one of slack).
        let moved = Instant::now();
        server.move_the_mouse(200);
        let back = source.user_idle().expect("the display answers");
        assert!(
            back <= moved.elapsed() + Duration::from_millis(1) && back < away,
            "{back:?}"
        );
    }

    #[test]
    fn a_display_that_goes_away_cannot_tell_and_one_that_never_was_is_refused() {
        let server = Xvfb::start();
        let mut source = X11Idle::connect(&server.display).unwrap();
        assert!(source.user_idle().is_some());
        drop(server);
        // The connection breaks: "cannot tell", neither a stale answer nor a stall.
        let started = Instant::now();
        let answers: Vec<_> = (0..5).map(|_| source.user_idle()).collect();
        assert!(answers.iter().all(Option::is_none), "{answers:?}");
        // No stall: a broken connection answers at once (a loose bound, for a loaded machine).
        assert!(started.elapsed() < Duration::from_secs(5));
        // A display no server has: not the one just freed, which a test beside this one may
        // have been given by now (Xvfb takes the lowest free number).
        let never = ":59000";
        assert!(!std::path::Path::new("/tmp/.X11-unix/X59000").exists());
        let error = X11Idle::connect(never).err().expect("no server");
        assert!(error.to_string().contains(never), "{error}");
    }
}
