//! Exit codes, one per kind of failure a script may want to tell apart.
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success |
//! | 1 | failure (a doctor check failed, a file could not be written, …) |
//! | 2 | usage: a bad flag or argument, or a question with no answer and no TTY |
//! | 3 | the gateway is not running or cannot be reached |
//! | 4 | the gateway refused the gateway key |
//! | 5 | the gateway answered with another error (unknown model, upstream failure, …) |

use std::fmt;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_RUNNING: u8 = 3;
pub const KEY_REFUSED: u8 = 4;
pub const REQUEST_FAILED: u8 = 5;

/// An error that ends the command with a specific exit code. The message is
/// one line; `hint` (optional) says what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// Ends the command with `code` after the output already printed, with no
    /// further message.
    pub fn silent(code: u8) -> Failure {
        Failure::new(code, "")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand: `Err(fail(code, "message"))?`.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Failure::new(code, message).into()
}
