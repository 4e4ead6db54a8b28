//! The HTTP routes. Every error is JSON `{"error": REASON}` (plus `images` naming the bad
//! parts for 400), so a client can always say what went wrong.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::budget::Reservation;
use super::{Scores, State, metrics};
use crate::data::{Chw, DecodeError, decode_bytes_for, preprocess};
use crate::infer::top_k;

/// The routes, with authentication (when a key is set) and the response counters around them.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/predict", post(predict))
        // The multipart parser reads this limit (its default is 2 MB); the body itself was
        // already read against it.
        .layer(DefaultBodyLimit::max(state.config.max_body))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// A JSON error response.
fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": reason.into() }))).into_response()
}

/// 503 with `Retry-After`: the client should come back, not give up.
fn busy(reason: impl Into<String>) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Count every response by status, and time the prediction requests.
async fn count(Extract(state): Extract<Arc<State>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = metrics::route_index(request.uri().path());
    let response = next.run(request).await;
    state
        .metrics
        .count_status(route, response.status().as_u16());
    if route == metrics::PREDICT {
        state
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

/// With an API key set, every route but `/healthz` needs it.
async fn authenticate(
    Extract(state): Extract<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.config.api_key else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz"
        || presented_key(request.headers()).is_some_and(|k| same(k, key))
    {
        return next.run(request).await;
    }
    // Read the body before answering (thrown away, as `drain` bounds it): a client still
    // sending it would otherwise get a broken connection instead of the 401.
    drain(request.into_body(), drain_limit(state.config.max_body)).await;
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "an API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("x-api-key") {
        return value.to_str().ok();
    }
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Compare without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

async fn readyz(Extract(state): Extract<Arc<State>>) -> Response {
    match state.model.get() {
        Some(model) => (StatusCode::OK, format!("ready: {}\n", model.name)).into_response(),
        None => busy("the model is loading"),
    }
}

async fn metrics(Extract(state): Extract<Arc<State>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(state.gauges()),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct PredictQuery {
    /// Classes per image.
    top: Option<usize>,
}

/// One image of a request: what errors call it, what the response calls it, its bytes.
struct Part {
    label: PathBuf,
    name: Option<String>,
    bytes: Bytes,
}

async fn predict(
    Extract(state): Extract<Arc<State>>,
    Query(query): Query<PredictQuery>,
    request: Request,
) -> Response {
    let Some(model) = state.model.get() else {
        // Read first (thrown away), as for a 401.
        drain(request.into_body(), drain_limit(state.config.max_body)).await;
        return busy("the model is loading");
    };
    let number = state.request_number();
    let (parts, body) = request.into_parts();
    // Held until the body's bytes are freed, after decoding.
    let (bytes, reservation) = match read_body(&state, &parts.headers, body, number).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let images = if multipart {
        let request = Request::from_parts(parts, Body::from(bytes));
        match multipart_parts(request, number).await {
            Ok(images) => images,
            Err(response) => return response,
        }
    } else {
        vec![Part {
            label: PathBuf::from(format!("request {number}")),
            name: None,
            bytes,
        }]
    };
    if images.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("request {number}: no image in the body"),
        );
    }

    // Decoding is CPU work: on graft's thread pool, where the model's own parallel work runs
    // too, so that the two take turns by task instead of the OS preempting a model thread
    // that the others then wait for (measured: 0.75x of `bench forward` with blocking
    // threads, see docs/serve.md).
    let config = model.config.clone();
    let limits = state.config.limits;
    let labels: Vec<PathBuf> = images.iter().map(|p| p.label.clone()).collect();
    let names: Vec<Option<String>> = images.iter().map(|p| p.name.clone()).collect();
    let decoding = super::Decoding::start(&state, images.len());
    let (done, decoded) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let decoded: Vec<Result<Chw, DecodeError>> = images
            .iter()
            .map(|part| decode_part(part, &config, limits))
            .collect();
        // The body's bytes go, and its share of the budget with them.
        drop(images);
        drop(reservation);
        let _ = done.send(decoded);
    });
    let Ok(decoded) = decoded.await else {
        // decode_part catches panics: only a pool shutting down drops the answer.
        return busy("the server is stopping");
    };
    if decoded.iter().any(Result::is_err) {
        let reasons: Vec<_> = decoded
            .iter()
            .zip(&names)
            .map(|(result, name)| match result {
                Ok(_) => json!({ "name": name }),
                Err(e) => json!({ "name": name, "error": e.reason }),
            })
            .collect();
        // cannot fail: some result is an error (checked above)
        let first = decoded
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("an error");
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": first.to_string(), "images": reasons })),
        )
            .into_response();
    }
    let chws: Vec<Chw> = decoded.into_iter().flatten().collect();
    let receivers = match state.queue.submit(chws) {
        Ok(receivers) => receivers,
        Err(refused) => return busy(format!("request {number}: {refused}; retry later")),
    };
    drop(decoding);
    let k = query.top.unwrap_or(state.config.top).max(1);
    let class_names: Vec<&str> = model.classes.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(receivers.len());
    for ((receiver, name), label) in receivers.into_iter().zip(names).zip(labels) {
        let scores: Scores = match receiver.await {
            Ok(scores) => scores,
            Err(_) => return busy("the server is stopping"),
        };
        match scores {
            Ok(probabilities) => out.push(json!({
                "name": name,
                "predictions": top_k(&probabilities, k, &class_names),
            })),
            Err(reason) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{}: {reason}", label.display()),
                );
            }
        }
    }
    axum::Json(json!({ "model": model.name, "images": out })).into_response()
}

/// Decode and preprocess one part. A panic in a decoder (a hostile file finding a bug) is
/// this image's error, not the server's end.
fn decode_part(
    part: &Part,
    config: &crate::backbone::SourceConfig,
    limits: crate::data::DecodeLimits,
) -> Result<Chw, DecodeError> {
    std::panic::catch_unwind(|| {
        decode_bytes_for(&part.label, &part.bytes, config, limits)
            .map(|rgb| preprocess(&rgb, config))
    })
    .unwrap_or_else(|_| {
        Err(DecodeError {
            path: part.label.clone(),
            reason: "the decoder failed on this image".into(),
        })
    })
}

/// Every file part of a multipart body (fields without a file name count too: any part is an
/// image).
async fn multipart_parts(request: Request, number: u64) -> Result<Vec<Part>, Response> {
    let bad = |e: &dyn std::fmt::Display| {
        error(
            StatusCode::BAD_REQUEST,
            format!("request {number}: malformed multipart body: {e}"),
        )
    };
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad(&e.body_text()))?;
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| bad(&e))? {
        let index = parts.len() + 1;
        let name = field
            .file_name()
            .or_else(|| field.name())
            .map(str::to_string);
        let label = match &name {
            Some(name) => format!("request {number}, part {index} ({name})"),
            None => format!("request {number}, part {index}"),
        };
        let bytes = field.bytes().await.map_err(|e| bad(&e))?;
        parts.push(Part {
            label: PathBuf::from(label),
            name,
            bytes,
        });
    }
    Ok(parts)
}

/// The request's body, within `--max-body` and the body budget, and the share of the budget
/// it holds (to keep until its bytes are freed); or the response that refuses it: 413 over
/// `--max-body`, 503 with `Retry-After` when the budget has no room, both before any of the
/// body is read when its `Content-Length` says so, and as soon as it crosses either otherwise.
async fn read_body(
    state: &State,
    headers: &HeaderMap,
    mut body: Body,
    number: u64,
) -> Result<(Bytes, Reservation), Response> {
    // A body the whole budget cannot hold would get 503 forever: it is too large instead.
    let limit = state.config.max_body.min(state.config.body_budget);
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request {number}: the body is over the limit of {limit} bytes"),
        )
    };
    let over_budget = |bytes: usize| {
        busy(format!(
            "request {number}: the server holds at most {} bytes of request bodies at once and has no room for {bytes} more; retry later",
            state.config.body_budget
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut reservation = state.body_budget.reservation();
    if let Some(len) = declared {
        if len > limit {
            return Err(refuse_unread(too_large(), body, headers, limit));
        }
        if !reservation.cover(len) {
            return Err(refuse_unread(over_budget(len), body, headers, limit));
        }
    }
    let mut kept: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("request {number}: reading the body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = kept.len() + data.len();
        if len > limit {
            return Err(refuse_unread(too_large(), body, headers, limit));
        }
        if len > kept.capacity() {
            // Grow as a Vec would, and reserve what is allocated, not only what is used.
            let capacity = len.max(kept.capacity() * 2).min(limit);
            if !reservation.cover(capacity) {
                return Err(refuse_unread(over_budget(capacity), body, headers, limit));
            }
            kept.reserve_exact(capacity - kept.len());
        }
        kept.extend_from_slice(&data);
    }
    Ok((Bytes::from(kept), reservation))
}

/// `response` to a request whose body is not (all) read, closing the connection after it. The
/// rest of the body is read on and thrown away (one frame in memory at a time, up to
/// [`drain_limit`]) so that a client still sending it gets the response instead of a reset
/// connection; a client that waits for `100 Continue` is not told to send it.
fn refuse_unread(
    mut response: Response,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_TIME, drain(body, drain_limit(limit))).await;
        });
    }
    response
}

/// How long a refused body is read on at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// How much of a refused body is read on: a few times `--max-body`, so that a client a little
/// over it gets its 413; past that the connection is closed.
fn drain_limit(max_body: usize) -> usize {
    max_body.saturating_mul(4).max(64 * 1024 * 1024)
}

/// Read `body` to its end (or `limit` bytes) and throw it away.
async fn drain(mut body: Body, limit: usize) {
    let mut seen = 0usize;
    while seen <= limit {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}
