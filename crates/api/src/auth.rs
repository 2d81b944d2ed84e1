//! Basic auth against the cluster's operator credentials.
//!
//! argon2 verification is deliberately slow, so a header that verified once is remembered
//! together with the hash it matched; changing the password invalidates it. Every other header
//! goes through the store's login guard ([`flotilla_store::check_login`]): argon2 on the
//! blocking pool behind a semaphore, failures slowed per source address (answered 429 with
//! `Retry-After`), a wrong user name as costly as a wrong password.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use flotilla_store::{check_login, Login, PeerAddr};

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
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let PeerAddr(source) = PeerAddr::of(request.extensions());
    match check(&context, header.as_deref(), source).await {
        Ok(()) => next.run(request).await,
        Err(Refusal::Unauthorized(e)) => {
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"flotilla\""),
            );
            response
        }
        Err(Refusal::Later { error, retry_after }) => {
            let mut response = error.into_response();
            let seconds = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            response
        }
    }
}

/// Why a request was not let through.
enum Refusal {
    /// No or wrong credentials (401, with the `WWW-Authenticate` challenge).
    Unauthorized(ApiError),
    /// Not checked now: the source failed too often lately (429) or the node is busy checking
    /// others (503); try again after `retry_after`.
    Later {
        error: ApiError,
        retry_after: Duration,
    },
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Unauthorized(e)
    }
}

fn unauthorized(description: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        error_code: "unauthorized",
        description: description.to_string(),
    }
}

/// Checks the `Authorization` header `value` of a request from `source`.
async fn check(
    context: &ApiContext,
    value: Option<&str>,
    source: Option<IpAddr>,
) -> Result<(), Refusal> {
    let state = context.store.state();
    let cluster = state.cluster().map_err(|e| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        error_code: "cluster_not_created",
        description: e.to_string(),
    })?;
    let value = value.ok_or_else(|| {
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
    match check_login(source, &cluster.credentials, &user, &password).await {
        Login::Accepted => {}
        Login::Refused => return Err(unauthorized("wrong user name or password").into()),
        Login::Throttled { retry_after } => {
            let from = source.map_or_else(String::new, |ip| format!(" from {ip}"));
            let error = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error_code: "too_many_failed_logins",
                description: format!(
                    "too many failed logins{from}: try again in {} s with the right --user/--password",
                    retry_after.as_secs().max(1)
                ),
            };
            return Err(Refusal::Later { error, retry_after });
        }
        Login::Busy => {
            let error = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error_code: "busy",
                description: "the node is busy checking other logins: try again in a moment".into(),
            };
            let retry_after = Duration::from_secs(1);
            return Err(Refusal::Later { error, retry_after });
        }
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
