//! A real X server for the tests of X idle detection: Debian's Xvfb (which `.ci/run` installs)
//! on a display of its own, and pointer motion sent to it through the XTEST extension, which
//! the server handles exactly like a real mouse's.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;

/// A running Xvfb, killed when dropped.
pub struct Xvfb {
    child: Child,
    /// The display name, `":N"`.
    pub display: String,
}

impl Xvfb {
    /// Starts Xvfb on a display number it chooses itself (`-displayfd`, so concurrent tests
    /// never race for one) and waits until it accepts connections.
    pub fn start() -> Self {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "320x240x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (`apt-get install xvfb`; the README's test command installs it)");
        // Xvfb writes the display number once it is ready for clients.
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the display number from Xvfb");
        let number: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Xvfb printed {line:?}, not a display number"));
        Self {
            child,
            display: format!(":{number}"),
        }
    }

    /// Moves the pointer to `x` and waits until the server has handled it.
    pub fn move_the_mouse(&self, x: i16) {
        let (connection, screen) = x11rb::connect(Some(&self.display)).expect("connect to Xvfb");
        let root = connection.setup().roots[screen].root;
        connection
            .xtest_fake_input(
                xproto::MOTION_NOTIFY_EVENT,
                0,
                x11rb::CURRENT_TIME,
                root,
                x,
                17,
                0,
            )
            .expect("XTEST motion");
        // A round trip: when the server answers, it has handled the motion.
        connection
            .get_input_focus()
            .expect("request")
            .reply()
            .expect("reply");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, it leaves its socket and lock file behind: removed, as a clean exit would.
        let number = self.display.trim_start_matches(':');
        let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{number}"));
        let _ = std::fs::remove_file(format!("/tmp/.X{number}-lock"));
    }
}
