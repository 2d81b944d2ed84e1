//! Errors that stop a load check from producing a trustworthy report.
//!
//! Failures of individual operations under load are not errors here: they are counted in the
//! [`crate::Report`]. These are the cases where there is no report to give (bad configuration,
//! an endpoint that cannot be read back for verification, a worker that panicked).

/// Why a load check could not run or could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum LoadcheckError {
    /// The configuration cannot describe a run (bad endpoint, zero clients, ...).
    #[error("invalid loadcheck config: {0}")]
    InvalidConfig(String),
    /// Verification could not read the acknowledged writes back, so lost writes are unknown.
    #[error("verification against {endpoint} failed after {attempts} attempts: {reason}")]
    Verify {
        /// The endpoint that was being read back.
        endpoint: String,
        /// How many attempts were made before giving up.
        attempts: u32,
        /// The last failure seen.
        reason: String,
    },
    /// A load client task panicked or was cancelled; its record of acknowledged writes is gone.
    #[error("a load client task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}
