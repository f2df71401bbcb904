//! User idle time from input devices, for machines with neither logind nor an X display (or a
//! worker that may not use them): the kernel's event devices and the terminals.
//!
//! - **Event devices** (`/dev/input/event*` and `/dev/input/mice`, readable by root or the
//!   `input` group). Each reader gets its own copy of every event, so reading takes nothing
//!   from the desktop. Only devices whose capabilities (read from sysfs, no ioctl) include keys
//!   or relative motion count, so an accelerometer's stream or a lid switch is not mistaken for
//!   a person; of their events, only keys, relative and absolute motion count. The worker looks
//!   only at whether such an event came, never at which key.
//! - **Terminals** (`/dev/pts/*`, `/dev/tty<N>`): the kernel moves a terminal's access time
//!   when a program reads what was typed on it (at most every 8 seconds, enough for minutes of
//!   idleness), which is how logind itself judges text sessions.
//!
//! Devices and terminals are listed again every [`RESCAN_EVERY`], for hot-plugged mice and new
//! sessions.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{Mode, OFlags};

use crate::sources::IdleSource;

/// How often the device and terminal lists are read again.
pub const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// Event types that mean a person: `EV_KEY`, `EV_REL`, `EV_ABS` (linux/input-event-codes.h).
const PERSON_EVENT_TYPES: [u16; 3] = [1, 2, 3];

/// Capability bits (of sysfs's `capabilities/ev`) that make a device an input device of a
/// person: `EV_KEY` and `EV_REL`.
const PERSON_CAPABILITIES: u64 = (1 << 1) | (1 << 2);

/// `struct input_event`: a `timeval` of two kernel longs, then type, code and value.
const EVENT_SIZE: usize = 2 * std::mem::size_of::<usize>() + 8;

/// One open event device.
struct EventDevice {
    path: PathBuf,
    fd: OwnedFd,
    /// `/dev/input/mice` speaks the PS/2 byte protocol, not `struct input_event`: any byte is
    /// motion or a button.
    raw: bool,
    /// Bytes of an event split across reads.
    partial: Vec<u8>,
}

/// The input-device idle source. See the module documentation.
pub struct InputDevices {
    root: PathBuf,
    devices: Vec<EventDevice>,
    terminals: Vec<PathBuf>,
    scanned: Instant,
    /// When an event device last reported a person; the source's start until one does.
    last_event: Instant,
}

impl InputDevices {
    /// The devices and terminals under `root` (`/` on a real machine); `None` if there are
    /// none this process can use.
    pub fn find(root: &Path) -> Option<Self> {
        let mut source = Self {
            root: root.to_owned(),
            devices: Vec::new(),
            terminals: Vec::new(),
            scanned: Instant::now(),
            last_event: Instant::now(),
        };
        source.rescan();
        (!source.devices.is_empty() || !source.terminals.is_empty()).then_some(source)
    }

    /// How many event devices and terminals it watches.
    pub fn counts(&self) -> (usize, usize) {
        (self.devices.len(), self.terminals.len())
    }

    fn rescan(&mut self) {
        self.scanned = Instant::now();
        let input = self.root.join("dev/input");
        let mut seen: Vec<PathBuf> = Vec::new();
        for path in list(&input) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let raw = name == "mice";
            let watched = raw || (name.starts_with("event") && self.is_person_device(name));
            if !watched {
                continue;
            }
            seen.push(path.clone());
            if self.devices.iter().any(|d| d.path == path) {
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
            if let Ok(fd) = rustix::fs::open(&path, flags, Mode::empty()) {
                self.devices.push(EventDevice {
                    path,
                    fd,
                    raw,
                    partial: Vec::new(),
                });
            }
        }
        // Unplugged devices go.
        self.devices.retain(|d| seen.contains(&d.path));
        let mut terminals: Vec<PathBuf> = list(&self.root.join("dev/pts"))
            .into_iter()
            .filter(|p| numbered(p, ""))
            .collect();
        terminals.extend(
            list(&self.root.join("dev"))
                .into_iter()
                .filter(|p| numbered(p, "tty")),
        );
        self.terminals = terminals;
    }

    /// Whether sysfs says the device has keys or relative motion.
    fn is_person_device(&self, name: &str) -> bool {
        let file = self
            .root
            .join("sys/class/input")
            .join(name)
            .join("device/capabilities/ev");
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| u64::from_str_radix(text.trim(), 16).ok())
            .is_some_and(|bits| bits & PERSON_CAPABILITIES != 0)
    }

    /// Reads what the event devices have queued; true if a person did something. A device
    /// that fails (unplugged) is dropped.
    fn drain_events(&mut self) -> bool {
        let mut person = false;
        let mut buffer = [0u8; 4096];
        self.devices.retain_mut(|device| {
            loop {
                match rustix::io::read(&device.fd, &mut buffer) {
                    Ok(0) => return true,
                    Ok(n) => {
                        if device.raw {
                            person = true;
                        } else {
                            device.partial.extend_from_slice(&buffer[..n]);
                            person |= person_events(&mut device.partial);
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => return true,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return false,
                }
            }
        });
        person
    }

    /// The newest access time among the terminals.
    fn last_typed(&self) -> Option<SystemTime> {
        self.terminals
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.accessed()).ok())
            .max()
    }
}

/// Takes the whole events from `bytes` (leaving a split one) and says whether any is a person's.
fn person_events(bytes: &mut Vec<u8>) -> bool {
    let whole = bytes.len() - bytes.len() % EVENT_SIZE;
    let type_at = 2 * std::mem::size_of::<usize>();
    let person = bytes[..whole].chunks_exact(EVENT_SIZE).any(|event| {
        let kind = u16::from_ne_bytes([event[type_at], event[type_at + 1]]);
        PERSON_EVENT_TYPES.contains(&kind)
    });
    bytes.drain(..whole);
    person
}

/// The entries of a directory (none if it cannot be read).
fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Whether the file name is `prefix` followed by a number.
fn numbered(path: &Path, prefix: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(prefix))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl IdleSource for InputDevices {
    fn name(&self) -> String {
        let (devices, terminals) = self.counts();
        format!(
            "input devices ({devices} event devices, {terminals} terminals under {})",
            self.root.join("dev").display()
        )
    }

    fn user_idle(&mut self) -> Option<Duration> {
        if self.scanned.elapsed() >= RESCAN_EVERY {
            self.rescan();
        }
        if self.drain_events() {
            self.last_event = Instant::now();
        }
        // Without event devices, the terminals alone tell.
        let since_event = (!self.devices.is_empty()).then(|| self.last_event.elapsed());
        let since_typed = self
            .last_typed()
            .map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        match (since_event, since_typed) {
            (Some(event), Some(typed)) => Some(event.min(typed)),
            (event, typed) => event.or(typed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An `input_event` of the given type, as the kernel writes it.
    fn event(kind: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; EVENT_SIZE];
        let type_at = 2 * std::mem::size_of::<usize>();
        bytes[type_at..type_at + 2].copy_from_slice(&kind.to_ne_bytes());
        bytes[type_at + 2..type_at + 4].copy_from_slice(&30u16.to_ne_bytes());
        bytes[type_at + 4..].copy_from_slice(&1i32.to_ne_bytes());
        bytes
    }

    #[test]
    fn events_of_a_person_are_told_from_others_even_when_split() {
        // EV_SYN (0), EV_MSC (4), EV_SW (5), EV_LED (17): not a person.
        let mut bytes: Vec<u8> = [0u16, 4, 5, 17].into_iter().flat_map(event).collect();
        assert!(!person_events(&mut bytes));
        assert!(bytes.is_empty());
        // A key event arriving in two reads.
        let key = event(1);
        let mut first = key[..10].to_vec();
        assert!(!person_events(&mut first));
        assert_eq!(first.len(), 10, "the split event is kept");
        first.extend_from_slice(&key[10..]);
        assert!(person_events(&mut first));
        for kind in [2, 3] {
            assert!(person_events(&mut event(kind)), "type {kind}");
        }
    }

    /// A fixture root whose `dev/input/event0` is a FIFO standing in for an event device (this
    /// machine has no `/dev/input` nor `/dev/uinput`): the source reads it with the same
    /// non-blocking reads. `capabilities` is its sysfs `ev` mask.
    fn fixture_with_event_device(capabilities: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("dev/input");
        std::fs::create_dir_all(&input).unwrap();
        let fifo = input.join("event0");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let caps = root
            .path()
            .join("sys/class/input/event0/device/capabilities");
        std::fs::create_dir_all(&caps).unwrap();
        std::fs::write(caps.join("ev"), capabilities).unwrap();
        (root, fifo)
    }

    #[test]
    fn a_key_on_an_event_device_makes_the_user_present() {
        // EV_SYN | EV_KEY | EV_MSC | EV_LED | EV_REP: a keyboard.
        let (root, fifo) = fixture_with_event_device("120013\n");
        let mut source = InputDevices::find(root.path()).expect("the device is found");
        assert_eq!(source.counts(), (1, 0));
        let mut device = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let before = source.user_idle().unwrap();
        assert!(before >= Duration::from_millis(300), "{before:?}");
        // An LED change is not a person.
        device.write_all(&event(17)).unwrap();
        assert!(source.user_idle().unwrap() >= Duration::from_millis(300));
        // A key is: idle from then on, whatever the machine's load (no fixed bound).
        let written = std::time::Instant::now();
        device.write_all(&event(1)).unwrap();
        let after = source.user_idle().unwrap();
        assert!(after <= written.elapsed(), "{after:?}");
    }

    #[test]
    fn devices_without_keys_or_motion_are_not_watched() {
        // EV_SYN | EV_ABS: an accelerometer, whose stream is no person.
        let (root, _fifo) = fixture_with_event_device("9\n");
        assert!(InputDevices::find(root.path()).is_none());
        let (root, _fifo) = fixture_with_event_device("not hex");
        assert!(InputDevices::find(root.path()).is_none());
    }

    /// A real terminal: a pseudo-terminal from the kernel, linked into a fixture root as
    /// `dev/pts/0`. Typing on it (writing to the master, read by the program on the slave)
    /// moves the access time the source reads.
    #[test]
    fn typing_on_a_terminal_makes_the_user_present() {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave_path =
            PathBuf::from(ptsname(&master, Vec::new()).unwrap().into_string().unwrap());
        let mut slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        slave
            .set_times(std::fs::FileTimes::new().set_accessed(hour_ago))
            .unwrap();

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/pts")).unwrap();
        std::os::unix::fs::symlink(&slave_path, root.path().join("dev/pts/0")).unwrap();
        let mut source = InputDevices::find(root.path()).expect("the terminal is found");
        assert_eq!(source.counts(), (0, 1));
        let away = source.user_idle().unwrap();
        assert!(away >= Duration::from_secs(3590), "{away:?}");

        let mut master = std::fs::File::from(master);
        master.write_all(b"x\n").unwrap();
        let mut line = [0u8; 8];
        let read = slave.read(&mut line).unwrap();
        assert_eq!(&line[..read], b"x\n");
        let back = source.user_idle().unwrap();
        assert!(back < Duration::from_secs(10), "{back:?}");
    }

    #[test]
    fn only_numbered_terminals_count() {
        assert!(numbered(Path::new("/dev/pts/3"), ""));
        assert!(numbered(Path::new("/dev/tty12"), "tty"));
        assert!(!numbered(Path::new("/dev/pts/ptmx"), ""));
        assert!(!numbered(Path::new("/dev/ttyS0"), "tty"));
        assert!(!numbered(Path::new("/dev/tty"), "tty"));
    }
}
