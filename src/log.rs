//! Log lines through `tracing` when the `tracing` feature is on; nothing otherwise.

macro_rules! warning {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::warn!($($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = format_args!($($arg)+);
        }
    }};
}

macro_rules! notice {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::info!($($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = format_args!($($arg)+);
        }
    }};
}

macro_rules! error {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::error!($($arg)+);
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = format_args!($($arg)+);
        }
    }};
}

pub(crate) use {error, notice, warning};
