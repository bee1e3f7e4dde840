//! API errors: a status code and an [`ErrorBody`] that says what was wrong and, when it was a
//! field of the request, which one.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handover_core::api::{BalancerResult, ErrorBody};

use crate::coordinator::CoordinatorError;

/// An error reply.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: ErrorBody,
}

impl ApiError {
    fn new(
        status: StatusCode,
        error: impl Into<String>,
        field: Option<&str>,
        balancers: Vec<BalancerResult>,
    ) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                field: field.map(str::to_string),
                balancers,
            },
        }
    }

    /// 400 for a malformed request, naming the field when there is one.
    pub fn bad_request(error: impl Into<String>, field: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, field, Vec::new())
    }

    /// 401 for a missing or wrong token.
    pub fn unauthorized(error: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, error, None, Vec::new())
    }

    /// 405 for a method the path does not serve.
    pub fn method_not_allowed(error: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, error, None, Vec::new())
    }

    /// 404.
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, None, Vec::new())
    }

    /// 503 for a change this node cannot make now (e.g. it cannot be made durable); nothing
    /// changed.
    pub fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error, None, Vec::new())
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(error: CoordinatorError) -> Self {
        let message = error.to_string();
        match error {
            CoordinatorError::Rejected(_) => Self::new(StatusCode::CONFLICT, message, None, Vec::new()),
            CoordinatorError::UnknownVm { results, .. } => {
                Self::new(StatusCode::NOT_FOUND, message, None, results)
            }
            CoordinatorError::Unavailable(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message, None, Vec::new())
            }
            CoordinatorError::BadRequest { field, .. } => {
                Self::new(StatusCode::BAD_REQUEST, message, Some(field), Vec::new())
            }
            CoordinatorError::Unidentified { results, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message, None, results)
            }
            CoordinatorError::NotSaved { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, message, None, Vec::new())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
