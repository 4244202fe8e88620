//! The JSON body extractor: the body read up to a size limit (413 past it), parsed with the path of the field at
//! fault in the message (`messages[0].content: invalid type: ...`), so that a client sees what to fix.

use super::error::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A request body parsed as `T`.
pub struct JsonBody<T>(pub T);

/// A request body's bytes (within the size limit), for endpoints that read it as two types (their own fields and
/// [`super::params::CommonFields`]; serde's `flatten` would lose the path of a field at fault).
pub struct RawBody(pub Vec<u8>);

/// Past the limit the body is still read (and dropped) up to this many times the limit, so that a client which
/// sends it all gets the 413 instead of a reset connection; past that the connection is cut.
const DRAIN_FACTOR: usize = 16;

/// The body's bytes, at most `limit` of them.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}"), None))?;
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > limit.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf)
}

/// `bytes` as `T`, or a 400 that says where and why.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {inner}"), None)
        } else if path == "." {
            ApiError::bad_request(format!("the request body: {inner}"), None)
        } else {
            ApiError::bad_request(format!("{path}: {inner}"), Some(&path))
        }
    })
}

impl FromRequest<Arc<AppState>> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        read_limited(req.into_body(), state.config.max_body_bytes)
            .await
            .map(RawBody)
    }
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Req {
        #[allow(dead_code)]
        messages: Vec<Msg>,
    }
    #[derive(serde::Deserialize, Debug)]
    struct Msg {
        #[allow(dead_code)]
        content: String,
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let e = parse::<Req>(br#"{"messages": [{"content": 5}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
        assert!(
            e.message.starts_with("messages[0].content: invalid type: integer"),
            "{e:?}"
        );
        let e = parse::<Req>(br#"{"messages": [{"content": "x"}"#).unwrap_err();
        assert!(e.message.starts_with("the request body is not valid JSON"), "{e:?}");
        let e = parse::<Req>(b"{}").unwrap_err();
        assert!(e.message.contains("missing field `messages`"), "{e:?}");
        assert!(
            parse::<Req>(br#"{"messages": [], "unknown": {"a": 1}}"#).is_ok(),
            "unknown fields are ignored"
        );
    }
}
