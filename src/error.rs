//! Library errors: one line each, naming the op, argument or shape at fault and what fixes it.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// No usable adapter: says which driver to install.
    #[error("{0}")]
    NoAdapter(String),

    /// The device refused something at creation time (device, pipeline, buffer).
    #[error("GPU device error: {0}")]
    Device(String),

    /// An op was given shapes or arguments that do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A command-line or configuration value that cannot be used; says what can.
    #[error("{0}")]
    Usage(String),

    /// A binding or dispatch exceeds what the adapter allows.
    #[error("{what} needs {needed} but the adapter allows at most {limit}; {hint}")]
    Limit {
        what: String,
        needed: u64,
        limit: u64,
        hint: &'static str,
    },
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

/// Returns a shape error from the current function when `cond` is false.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::shape($op, format!($($fmt)+)));
        }
    };
}
