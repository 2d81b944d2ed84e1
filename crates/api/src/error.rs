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
            StoreError::NoLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_primary_node"),
            StoreError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "node_unreachable"),
            StoreError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            StoreError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        Self {
            status,
            error_code,
            description: e.to_string(),
        }
    }
}
