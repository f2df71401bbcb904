//! Links the test controls (issue 18): a coordinator's network and volunteers' home networks as
//! Linux network namespaces the test creates, joined by veth pairs, with faults put on each home's
//! link by `iptables` (random loss, a cut) and `tc tbf` (a bandwidth limit).
//!
//! ```text
//!   coordinator's namespace                home namespace i
//!   lo (127.0.0.1: HTTP)
//!   bridge hbr 10.201.0.1/24 ── c<i> ═══ veth ═══ v<i> 10.201.0.(10+i)/24
//! ```
//!
//! Every address is inside namespaces the test made, and they go when it drops the [`Network`].
//! Processes start in a namespace because the thread that spawns them has entered it
//! ([`Network::in_coordinator`], [`Network::in_home`]): a network namespace belongs to a thread,
//! and a child process starts in its parent thread's.
//!
//! Needs root (CI runs as root) and Debian's `iproute2` and `iptables` (the test command installs
//! them); without them, the test fails saying which.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The coordinator's address on the bridge every home's link reaches.
pub const COORDINATOR_ADDR: &str = "10.201.0.1";

/// The comments that mark the counting rules of a home's link.
const RECEIVED: &str = "herd-received";
const SENT: &str = "herd-sent";

/// A coordinator's network and `homes` home networks, each on its own link to it.
pub struct Network {
    coordinator: String,
    homes: Vec<String>,
}

/// The traffic a home's link carried, as its own `iptables` counters saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Bytes that reached the home (after any loss on the link).
    pub received: u64,
    /// Bytes the home sent, before any loss: retransmissions included.
    pub sent: u64,
}

/// Runs `command` with `args`, failing the test with what it printed if it fails.
fn run(command: &str, args: &[&str]) {
    let output = Command::new(command).args(args).output().unwrap_or_else(|error| {
        panic!(
            "`{command}` could not run ({error}): the network tests need root and Debian's iproute2 \
             and iptables (scripts/test installs them)"
        )
    });
    assert!(
        output.status.success(),
        "`{command} {}` failed (the network tests need root): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command` inside the namespace `ns`, returning its standard output.
fn run_in(ns: &str, command: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, command];
    all.extend_from_slice(args);
    let output = Command::new("ip")
        .args(&all)
        .output()
        .expect("run ip netns exec");
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        all.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `work` on a thread that has entered the namespace `ns`; panics in it reach the caller.
fn within<T: Send>(ns: &str, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|error| panic!("open network namespace {ns}: {error}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|error| panic!("enter network namespace {ns} (needs root): {error}"));
            work()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Network {
    /// Creates the coordinator's namespace and `homes` home namespaces with clean links.
    pub fn new(homes: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "herd{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let network = Self {
            coordinator: format!("{tag}c"),
            homes: (0..homes).map(|i| format!("{tag}h{i}")).collect(),
        };
        let c = network.coordinator.as_str();
        run("ip", &["netns", "add", c]);
        run("ip", &["-n", c, "link", "set", "lo", "up"]);
        run("ip", &["-n", c, "link", "add", "hbr", "type", "bridge"]);
        let bridge_addr = format!("{COORDINATOR_ADDR}/24");
        run("ip", &["-n", c, "addr", "add", &bridge_addr, "dev", "hbr"]);
        run("ip", &["-n", c, "link", "set", "hbr", "up"]);
        for (i, home) in network.homes.iter().enumerate() {
            let (port, end) = (format!("c{i}"), format!("v{i}"));
            run("ip", &["netns", "add", home]);
            run("ip", &["-n", home, "link", "set", "lo", "up"]);
            run(
                "ip",
                &[
                    "-n", c, "link", "add", &port, "type", "veth", "peer", "name", &end, "netns",
                    home,
                ],
            );
            run("ip", &["-n", c, "link", "set", &port, "master", "hbr"]);
            run("ip", &["-n", c, "link", "set", &port, "up"]);
            let addr = format!("{}/24", network.home_addr(i));
            run("ip", &["-n", home, "addr", "add", &addr, "dev", &end]);
            run("ip", &["-n", home, "link", "set", &end, "up"]);
            // Faults go in a chain of their own, so healing is one flush; the counting rules
            // after it see what got through (in) and everything the home sent (out).
            run_in(home, "iptables", &["-N", "FAULTS"]);
            run_in(
                home,
                "iptables",
                &["-A", "INPUT", "-i", &end, "-j", "FAULTS"],
            );
            run_in(
                home,
                "iptables",
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    &end,
                    "-m",
                    "comment",
                    "--comment",
                    RECEIVED,
                ],
            );
            run_in(
                home,
                "iptables",
                &[
                    "-A",
                    "OUTPUT",
                    "-o",
                    &end,
                    "-m",
                    "comment",
                    "--comment",
                    SENT,
                ],
            );
            run_in(
                home,
                "iptables",
                &["-A", "OUTPUT", "-o", &end, "-j", "FAULTS"],
            );
        }
        network
    }

    /// Home `i`'s address on its link.
    pub fn home_addr(&self, i: usize) -> String {
        format!("10.201.0.{}", 10 + i)
    }

    /// Runs `work` in the coordinator's namespace: a coordinator started there listens where the
    /// homes reach it, and its HTTP address on 127.0.0.1 is the test's own.
    pub fn in_coordinator<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        within(&self.coordinator, work)
    }

    /// Runs `work` in home `i`'s namespace: a worker started there reaches the coordinator only
    /// over that home's link.
    pub fn in_home<T: Send>(&self, i: usize, work: impl FnOnce() -> T + Send) -> T {
        within(&self.homes[i], work)
    }

    /// Drops each packet to or from home `i` with `probability` (each direction on its own).
    pub fn lose(&self, i: usize, probability: f64) {
        run_in(
            &self.homes[i],
            "iptables",
            &[
                "-A",
                "FAULTS",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability.to_string(),
                "-j",
                "DROP",
            ],
        );
    }

    /// Cuts home `i`'s link: nothing passes either way until [`Network::heal`].
    pub fn cut(&self, i: usize) {
        run_in(
            &self.homes[i],
            "iptables",
            &["-I", "FAULTS", "1", "-j", "DROP"],
        );
    }

    /// Takes every loss and cut off home `i`'s link (a bandwidth limit stays).
    pub fn heal(&self, i: usize) {
        run_in(&self.homes[i], "iptables", &["-F", "FAULTS"]);
    }

    /// Limits home `i`'s link to `rate` (tc's units: `1mbit`) each way, with a queue of 400 ms as
    /// a home router's might be: a token bucket on both ends of the veth pair.
    pub fn limit(&self, i: usize, rate: &str) {
        for (ns, dev) in [
            (&self.homes[i], format!("v{i}")),
            (&self.coordinator, format!("c{i}")),
        ] {
            run_in(
                ns,
                "tc",
                &[
                    "qdisc", "add", "dev", &dev, "root", "tbf", "rate", rate, "burst", "32kbit",
                    "latency", "400ms",
                ],
            );
        }
    }

    /// What home `i`'s link has carried so far.
    pub fn carried(&self, i: usize) -> Carried {
        let listing = run_in(&self.homes[i], "iptables", &["-L", "-v", "-x", "-n"]);
        let bytes = |comment: &str| {
            listing
                .lines()
                .find(|line| line.contains(&format!("/* {comment} */")))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|bytes| bytes.parse().ok())
                .unwrap_or_else(|| panic!("no `{comment}` counter in:\n{listing}"))
        };
        Carried {
            received: bytes(RECEIVED),
            sent: bytes(SENT),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.homes.iter().chain([&self.coordinator]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
