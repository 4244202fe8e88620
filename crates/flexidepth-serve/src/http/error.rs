//! Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status that goes
//! with each kind.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `invalid_api_key`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400: something wrong with the request (`param`: the field at fault).
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            param: param.map(str::to_string),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 400 with a code, for errors clients branch on.
    pub fn bad_request_code(message: impl Into<String>, param: &str, code: &'static str) -> Self {
        ApiError {
            code: Some(code),
            ..ApiError::bad_request(message, Some(param))
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid or missing API key: send it as 'Authorization: Bearer KEY'",
            )
        }
    }

    pub fn not_found(what: &str) -> Self {
        ApiError {
            code: Some("not_found"),
            ..ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
        }
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path")
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            code: Some("request_too_large"),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {limit} bytes (--max-body)"),
            )
        }
    }

    pub fn queue_full() -> Self {
        ApiError {
            code: Some("queue_full"),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "the server's queue is full; retry later")
        }
    }

    pub fn shutting_down() -> Self {
        ApiError {
            code: Some("shutting_down"),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down")
        }
    }

    /// An error with any status (from the scheduler).
    pub fn with_status(status: u16, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<flexidepth::Error> for ApiError {
    /// Library errors caused by the request's content are the client's (400); the others are ours (500).
    fn from(e: flexidepth::Error) -> Self {
        use flexidepth::Error as E;
        match e {
            E::Input(_) | E::InvalidParameter { .. } | E::ContextOverflow { .. } | E::Template(_) | E::Tokenizer(_) => {
                ApiError::bad_request(e.to_string(), None)
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}
