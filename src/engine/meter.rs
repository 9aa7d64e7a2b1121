//! The engine's metrics (feature `metrics`): what happened to each message of a server,
//! through the `metrics` facade. Without the feature every call here is empty.
//!
//! The names and their meaning are listed in [`crate::metrics`].

/// A server's metric handles, registered once when it starts serving (with the recorder
/// installed then) and labelled `source` with its source's name.
#[derive(Clone)]
pub(super) struct Meter {
    #[cfg(feature = "metrics")]
    handles: Handles,
}

#[cfg(feature = "metrics")]
#[derive(Clone)]
struct Handles {
    received: metrics::Counter,
    acked: metrics::Counter,
    retried: metrics::Counter,
    rejected: metrics::Counter,
    dead_lettered: metrics::Counter,
    panics: metrics::Counter,
    in_flight: metrics::Gauge,
    handling: metrics::Histogram,
}

/// When a receiver started.
pub(super) struct Started {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

/// What became of a message the engine handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Acked,
    Retried,
    Rejected,
    DeadLettered,
}

impl Meter {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn new(source: &str) -> Meter {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics as names;
            let source = source.to_owned();
            let counter = |name: &'static str| metrics::counter!(name, "source" => source.clone());
            Meter {
                handles: Handles {
                    received: counter(names::RECEIVED),
                    acked: counter(names::ACKED),
                    retried: counter(names::RETRIED),
                    rejected: counter(names::REJECTED),
                    dead_lettered: counter(names::DEAD_LETTERED),
                    panics: counter(names::PANICS),
                    in_flight: metrics::gauge!(names::IN_FLIGHT, "source" => source.clone()),
                    handling: metrics::histogram!(names::HANDLING_SECONDS, "source" => source),
                },
            }
        }
        #[cfg(not(feature = "metrics"))]
        Meter {}
    }

    /// A message is handed to its receiver (or given up as malformed).
    pub(super) fn received(&self) {
        #[cfg(feature = "metrics")]
        {
            self.handles.received.increment(1);
            self.handles.in_flight.increment(1.0);
        }
    }

    /// When a receiver starts (no clock is read without the feature).
    pub(super) fn start(&self) -> Started {
        Started {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }

    /// The receiver that started at `started` returned; `panicked` when it panicked.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn handled(&self, started: Started, panicked: bool) {
        #[cfg(feature = "metrics")]
        {
            self.handles
                .handling
                .record(started.at.elapsed().as_secs_f64());
            if panicked {
                self.handles.panics.increment(1);
            }
        }
    }

    /// The message's fate was decided; it is no longer in flight.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn settled(&self, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        {
            self.handles.in_flight.decrement(1.0);
            match outcome {
                Outcome::Acked => &self.handles.acked,
                Outcome::Retried => &self.handles.retried,
                Outcome::Rejected => &self.handles.rejected,
                Outcome::DeadLettered => &self.handles.dead_lettered,
            }
            .increment(1);
        }
    }
}
