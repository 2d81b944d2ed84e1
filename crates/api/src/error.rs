//! API errors: an HTTP status and a JSON body naming the object or field and the fix.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_model::rest::ErrorBody;
use flotilla_model::ModelError;
use flotilla_store::StoreError;

/// An error answered to a REST client.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {error_code}: {description}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `invalid_schema`, `unauthorized`.
    pub error_code: &'static str,
    /// Human description naming the field or object and the fix.
    pub description: String,
}

impl ApiError {
    /// A 400 for a field with a bad value.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_code: "invalid_schema",
            description: format!("{field}: {problem}"),
        }
    }

    /// A 504 `outcome_unknown` for a change that may have been applied: `check` is the command
    /// that tells (e.g. `flotilla db show cache`).
    pub fn outcome_unknown(e: &StoreError, check: &str) -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            error_code: "outcome_unknown",
            description: format!("{e}, e.g. with `{check}`"),
        }
    }

    /// A 404 for a missing object.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error_code: "not_found",
            description: what.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_code: self.error_code.to_string(),
            description: self.description,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, error_code) = match &e {
            StoreError::NotBootstrapped => {
                (StatusCode::SERVICE_UNAVAILABLE, "node_not_bootstrapped")
            }
            StoreError::AlreadyBootstrapped(_) => (StatusCode::CONFLICT, "already_bootstrapped"),
            StoreError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            StoreError::Refused(ModelError::AlreadyExists(_)) => {
                (StatusCode::CONFLICT, "already_exists")
            }
            StoreError::Refused(ModelError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Refused(ModelError::InvalidValue(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_value")
            }
            StoreError::Refused(ModelError::NotBootstrapped) => {
                (StatusCode::SERVICE_UNAVAILABLE, "cluster_not_created")
            }
            StoreError::NoPrimaryNode(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_primary_node"),
            StoreError::NotPrimaryNode { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "not_primary_node")
            }
            StoreError::NotSent { .. } => (StatusCode::BAD_GATEWAY, "node_unreachable"),
            // Not a server error: the change may well have been made; the description says how
            // to find out.
            StoreError::OutcomeUnknown { .. } => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown"),
            StoreError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            StoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            StoreError::StoreFile(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_file"),
        };
        Self {
            status,
            error_code,
            description: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_outcome_is_answered_as_such_not_as_a_server_error() {
        let e = StoreError::OutcomeUnknown {
            addr: "127.0.0.11:3333".into(),
            reason: "/internal/propose: the answer was cut off".into(),
        };
        let generic = ApiError::from(e.clone());
        assert_eq!(generic.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(generic.error_code, "outcome_unknown");
        assert!(
            generic.description.contains("may have been applied"),
            "{generic}"
        );
        let specific = ApiError::outcome_unknown(&e, "flotilla db show cache");
        assert_eq!(specific.error_code, "outcome_unknown");
        assert!(
            specific.description.contains("`flotilla db show cache`"),
            "names how to check: {specific}"
        );
    }

    #[test]
    fn a_request_that_was_not_sent_or_went_to_a_former_primary_says_so() {
        let not_sent = ApiError::from(StoreError::NotSent {
            addr: "127.0.0.12:3333".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(not_sent.error_code, "node_unreachable");
        assert!(
            not_sent.description.contains("nothing changed"),
            "{not_sent}"
        );
        let not_leader = ApiError::from(StoreError::NotPrimaryNode {
            primary_node: 2,
            rpc_addr: Some("127.0.0.12:3333".into()),
        });
        assert_eq!(not_leader.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            not_leader
                .description
                .contains("node 2 (at 127.0.0.12:3333)"),
            "{not_leader}"
        );
    }
}
