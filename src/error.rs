//! `StepError`, what a step returns when it cannot reach its desired state, and the
//! user-facing `RunError` the binaries turn into an exit code.

use std::fmt;

/// A step's failure: a message naming what is wrong, an optional cause, and whether another
/// attempt may succeed (API server unreachable, conflicts, webhooks not serving yet).
#[derive(Debug)]
pub struct StepError {
    pub message: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    pub retryable: bool,
}

impl StepError {
    /// A failure another attempt will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            retryable: false,
        }
    }

    /// A failure that may pass on a later attempt.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            retryable: true,
        }
    }

    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// The message and every cause, one per line.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = self
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.contains(&text) {
                out.push_str("\ncaused by: ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<kube::Error> for StepError {
    fn from(e: kube::Error) -> Self {
        let retryable = match &e {
            kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
            _ => true,
        };
        let message = match &e {
            kube::Error::Api(s) => {
                format!("API server said {} ({}): {}", s.code, s.reason, s.message)
            }
            other => format!("cannot reach the API server: {other}"),
        };
        Self {
            message,
            source: Some(Box::new(e)),
            retryable,
        }
    }
}

pub type StepResult<T> = Result<T, StepError>;
