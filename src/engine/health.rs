//! What an engine reports about itself.

use std::sync::Mutex;

/// A snapshot of a server's health, from [`Engine::health`](super::Engine::health).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// What the server is doing.
    pub state: HealthState,
    /// Messages handed to the receiver and not yet finished.
    pub in_flight: usize,
    /// Fetch or settle failures since the last success.
    pub consecutive_failures: u32,
    /// The last failure, if any since the last success.
    pub last_error: Option<String>,
}

impl Health {
    /// Whether the server is serving with a working connection.
    pub fn is_healthy(&self) -> bool {
        self.state == HealthState::Serving && self.consecutive_failures == 0
    }
}

/// What a server is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Not serving yet.
    Idle,
    /// Serving.
    Serving,
    /// The connection was lost; reconnecting with backoff.
    Reconnecting,
    /// Shutting down: no longer fetching, finishing in-flight messages.
    Draining,
    /// Shut down.
    Closed,
}

/// The mutable part of [`Health`], shared by the serve loop and the settler.
#[derive(Debug)]
pub(crate) struct HealthCell {
    inner: Mutex<(HealthState, u32, Option<String>)>,
}

impl HealthCell {
    pub(crate) fn new() -> Self {
        HealthCell {
            inner: Mutex::new((HealthState::Idle, 0, None)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (HealthState, u32, Option<String>)) -> T) -> T {
        // A poisoned lock only means a panic elsewhere while holding it; the data is plain.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub(crate) fn set_state(&self, state: HealthState) {
        self.with(|h| h.0 = state);
    }

    pub(crate) fn failure(&self, error: &crate::Error) {
        let text = error.to_string();
        self.with(|h| {
            h.1 = h.1.saturating_add(1);
            h.2 = Some(text);
        });
    }

    /// Records a success; cheap when nothing failed before.
    pub(crate) fn success(&self) {
        self.with(|h| {
            if h.1 != 0 {
                h.1 = 0;
                h.2 = None;
            }
        });
    }

    pub(crate) fn snapshot(&self, in_flight: usize) -> Health {
        self.with(|h| Health {
            state: h.0,
            in_flight,
            consecutive_failures: h.1,
            last_error: h.2.clone(),
        })
    }
}
