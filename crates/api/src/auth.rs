//! Basic auth against the cluster's operator credentials.
//!
//! argon2 verification is deliberately slow, so a header that verified once is remembered
//! together with the hash it matched; changing the password invalidates it.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::{ApiContext, ApiError};

/// Authorization headers that verified, with the password hash they matched.
#[derive(Default)]
pub(crate) struct Cache(Mutex<HashMap<String, String>>);

/// Middleware: answers 401 (JSON) unless the request carries the operator's credentials.
pub(crate) async fn require_basic_auth(
    State(context): State<ApiContext>,
    request: Request,
    next: Next,
) -> Response {
    match check(&context, &request) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"flotilla\""),
            );
            response
        }
    }
}

fn unauthorized(description: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        error_code: "unauthorized",
        description: description.to_string(),
    }
}

fn check(context: &ApiContext, request: &Request) -> Result<(), ApiError> {
    let state = context.store.state();
    let cluster = state.cluster().map_err(|e| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        error_code: "cluster_not_created",
        description: e.to_string(),
    })?;
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized(
                "basic auth required: pass --user/--password (or FLOTILLA_USER/FLOTILLA_PASSWORD)",
            )
        })?;
    let hash = &cluster.credentials.password_hash;
    {
        let cache = context.auth_cache.0.lock().expect("auth cache lock");
        if cache.get(value) == Some(hash) {
            return Ok(());
        }
    }
    let (user, password) =
        decode_basic(value).ok_or_else(|| unauthorized("malformed basic auth header"))?;
    if !flotilla_store::verify_credentials(&cluster.credentials, &user, &password) {
        return Err(unauthorized("wrong user name or password"));
    }
    let mut cache = context.auth_cache.0.lock().expect("auth cache lock");
    if cache.len() > 1024 {
        cache.clear();
    }
    cache.insert(value.to_string(), hash.clone());
    Ok(())
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_header_decodes_into_user_and_password() {
        let decoded = super::decode_basic("Basic YWRtaW46cDpzcw==");
        assert_eq!(decoded, Some(("admin".into(), "p:ss".into())));
        assert_eq!(super::decode_basic("Bearer x"), None);
    }
}
