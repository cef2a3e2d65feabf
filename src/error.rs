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
        let causes = self.source.as_deref().map(|e| e as &dyn std::error::Error);
        render_chain(&self.message, causes, "\ncaused by: ")
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
                let mut m = format!("API server said {} ({}): {}", s.code, s.reason, s.message);
                if s.message.contains("provided port is already allocated") {
                    m.push_str(LEAKED_NODE_PORT);
                }
                m
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

/// Added to "provided port is already allocated": the usual cause besides another Service.
const LEAKED_NODE_PORT: &str = "\n  hint: if `kubectl get svc -A` shows no Service with this \
node port, an API server that stopped during an earlier create leaked it; its repair loop frees \
a leaked port within about 10 minutes. Run again then, or pick another node port in the plan.";

/// The one renderer of error chains: `message`, then each cause from `first` down, joined by
/// `separator` (`"\ncaused by: "` for a step's failure, `": "` for a one-line message). A cause
/// whose text the rendering already holds is left out (many errors repeat their source).
pub fn render_chain(
    message: &str,
    first: Option<&dyn std::error::Error>,
    separator: &str,
) -> String {
    let mut out = message.to_string();
    let mut cause = first;
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(separator);
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The one mapping of a step's tool failure (helm, an exec step's program): fatal, with the
/// tool's error as its cause (a cancelled run needs none).
impl From<crate::process::ToolError> for StepError {
    fn from(e: crate::process::ToolError) -> Self {
        match e {
            crate::process::ToolError::Cancelled { .. } => StepError::fatal(e.to_string()),
            other => StepError::fatal(other.to_string()).with_source(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn api_errors_say_the_code_and_whether_to_retry() {
        let conflict = StepError::from(api(409, "Conflict", "the object has been modified"));
        assert!(conflict.retryable);
        assert_eq!(
            conflict.message,
            "API server said 409 (Conflict): the object has been modified"
        );
        let invalid = StepError::from(api(422, "Invalid", "spec.replicas: must be positive"));
        assert!(!invalid.retryable);
        assert!(!invalid.message.contains("hint:"));
    }

    #[test]
    fn an_allocated_node_port_gets_a_hint() {
        let e = StepError::from(api(
            422,
            "Invalid",
            "Service \"istio-ingressgateway\" is invalid: spec.ports[3].nodePort: Invalid value: 30666: provided port is already allocated",
        ));
        assert!(!e.retryable);
        assert!(
            e.message
                .starts_with("API server said 422 (Invalid): Service \"istio-ingressgateway\"")
        );
        assert!(
            e.message
                .contains("30666: provided port is already allocated\n  hint:")
        );
        assert!(e.message.contains("within about 10 minutes"));
    }
}
