//! The operator's error type.

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be serialized for an apply.
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The object lacks a field every stored object has (e.g. namespace).
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// The operating system gave no random bytes for a preStop token.
    #[error("no randomness for a preStop token: {0}")]
    Entropy(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::MissingField(_) => "missing_field",
            Error::Entropy(_) => "entropy",
        }
    }

    /// True when the API server refused an object as invalid (HTTP 422): retrying the same spec
    /// cannot help, so this is reported in status rather than retried with backoff.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 422)
    }
}
