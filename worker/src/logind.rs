//! User idle time from systemd-logind over D-Bus: the `IdleHint` and `IdleSinceHint`
//! properties of `org.freedesktop.login1.Manager`, which logind keeps for the whole machine (idle
//! only when every session is: desktop sessions report it through their environment, text
//! sessions through their terminal's last input). Properties are cached by the proxy and kept
//! current by logind's `PropertiesChanged` signals, so polling them costs no D-Bus round trip.
//!
//! While `IdleHint` is false the user counts as present (idle time zero); once true, idle time
//! is the time since `IdleSinceHint`. Desktops set the hint after their own idle delay, so on a
//! desktop computing starts that delay plus `idle_minutes` after the last input; the user's
//! return clears the hint at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

use crate::sources::IdleSource;

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Manager {
    #[zbus(property)]
    fn idle_hint(&self) -> zbus::Result<bool>;

    /// Microseconds since the Unix epoch.
    #[zbus(property)]
    fn idle_since_hint(&self) -> zbus::Result<u64>;
}

/// What logind said last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hint {
    idle: bool,
    since_us: u64,
}

/// The logind idle source. See the module documentation.
pub struct Logind {
    hint: Arc<Mutex<Option<Hint>>>,
    _watch: tokio::task::JoinHandle<()>,
}

impl Logind {
    /// Connects to logind on the system bus; `None` if there is no system bus or no logind.
    pub async fn connect_system() -> Option<Self> {
        let connection = zbus::Connection::system().await.ok()?;
        Self::with_connection(&connection).await
    }

    /// Uses an established connection (the system bus, or a test's peer).
    pub async fn with_connection(connection: &zbus::Connection) -> Option<Self> {
        let manager = ManagerProxy::builder(connection).build().await.ok()?;
        let first = read(&manager).await?;
        let hint = Arc::new(Mutex::new(Some(first)));
        let shared = hint.clone();
        // Every message on the connection, only to notice when it closes (property streams do
        // not end when the peer goes away).
        let mut messages = zbus::MessageStream::from(connection);
        let watch = tokio::spawn(async move {
            let mut idle_changes = manager.receive_idle_hint_changed().await;
            let mut since_changes = manager.receive_idle_since_hint_changed().await;
            loop {
                // Either property changing: read both (the cache holds the new values).
                tokio::select! {
                    change = idle_changes.next() => if change.is_none() { break },
                    change = since_changes.next() => if change.is_none() { break },
                    message = messages.next() => match message {
                        Some(Ok(_)) => continue,
                        _ => break,
                    },
                }
                let now = read(&manager).await;
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = now;
            }
            // logind went away: no longer a source.
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = None;
        });
        Some(Self {
            hint,
            _watch: watch,
        })
    }
}

async fn read(manager: &ManagerProxy<'_>) -> Option<Hint> {
    Some(Hint {
        idle: manager.idle_hint().await.ok()?,
        since_us: manager.idle_since_hint().await.ok()?,
    })
}

impl Drop for Logind {
    fn drop(&mut self) {
        self._watch.abort();
    }
}

impl IdleSource for Logind {
    fn name(&self) -> String {
        "systemd-logind (IdleHint over D-Bus)".into()
    }

    fn user_idle(&mut self) -> Option<Duration> {
        let hint = (*self.hint.lock().unwrap_or_else(PoisonError::into_inner))?;
        if !hint.idle {
            return Some(Duration::ZERO);
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Some(Duration::from_micros(now_us.saturating_sub(hint.since_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for logind's Manager object, served over a peer-to-peer D-Bus connection.
    struct FakeManager {
        idle: bool,
        since_us: u64,
    }

    #[zbus::interface(name = "org.freedesktop.login1.Manager")]
    impl FakeManager {
        #[zbus(property)]
        fn idle_hint(&self) -> bool {
            self.idle
        }

        #[zbus(property)]
        fn idle_since_hint(&self) -> u64 {
            self.since_us
        }
    }

    fn now_us() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_micros() as u64
    }

    #[tokio::test]
    async fn idle_time_follows_logind_and_the_users_return_is_seen_at_once() {
        let (server_end, client_end) = tokio::net::UnixStream::pair().expect("socket pair");
        let guid = zbus::Guid::generate();
        let ten_minutes_ago = now_us() - 600_000_000;
        let server = zbus::connection::Builder::unix_stream(server_end)
            .server(guid)
            .expect("guid")
            .p2p()
            .serve_at(
                "/org/freedesktop/login1",
                FakeManager {
                    idle: true,
                    since_us: ten_minutes_ago,
                },
            )
            .expect("serve");
        let client = zbus::connection::Builder::unix_stream(client_end).p2p();
        let (server, client) = tokio::join!(server.build(), client.build());
        let (server, client) = (server.expect("server"), client.expect("client"));

        let mut logind = Logind::with_connection(&client).await.expect("logind");
        let idle = logind.user_idle().expect("idle time");
        assert!(
            (Duration::from_secs(599)..Duration::from_secs(610)).contains(&idle),
            "{idle:?}"
        );
        // The user comes back: logind clears the hint and says so.
        let iface = server
            .object_server()
            .interface::<_, FakeManager>("/org/freedesktop/login1")
            .await
            .expect("interface");
        iface.get_mut().await.idle = false;
        let changed = std::time::Instant::now();
        iface
            .get()
            .await
            .idle_hint_changed(iface.signal_emitter())
            .await
            .expect("signal");
        loop {
            if logind.user_idle() == Some(Duration::ZERO) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_millis(100),
                "the return was not seen within 100 ms"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Away again, since a known moment.
        let since = now_us() - 5_000_000;
        {
            let mut manager = iface.get_mut().await;
            manager.idle = true;
            manager.since_us = since;
        }
        iface
            .get()
            .await
            .idle_hint_changed(iface.signal_emitter())
            .await
            .expect("signal");
        iface
            .get()
            .await
            .idle_since_hint_changed(iface.signal_emitter())
            .await
            .expect("signal");
        let started = std::time::Instant::now();
        loop {
            let idle = logind.user_idle().expect("idle time");
            if idle >= Duration::from_secs(5) {
                assert!(idle < Duration::from_secs(15), "{idle:?}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "stuck at {idle:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // logind goes away: the source no longer tells.
        drop(iface);
        server.close().await.expect("close");
        let started = std::time::Instant::now();
        while logind.user_idle().is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still answering"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
