//! `GET /api/v1/events`: request changes as server-sent events, built on the
//! control plane's `ReviewerService.Watch`.
//!
//! Each event's `id` is the stream sequence of the log event that made the
//! change, so a client that reconnects with `Last-Event-ID` (browsers' own
//! EventSource does) resumes after it: the control plane first sends the
//! current view of every request changed since (as `updated` events), then
//! goes on live. `?after=<sequence>` does the same for clients that cannot
//! set the header. Only requests the caller's groups may review are sent.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use airlock_proto::v1 as proto;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use crate::access::may_review;
use crate::error::ApiError;
use crate::json::{self, ErrorJson, Refusals, WatchEventJson};
use crate::metrics::Metrics;

/// Keeps the open-streams gauge right however the stream ends.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.event_streams_open.dec();
    }
}

/// Where to resume: `Last-Event-ID`, else `?after=`, else from now.
fn resume_after(headers: &HeaderMap, raw_query: Option<&str>) -> Result<u64, ApiError> {
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let from_query = url::form_urlencoded::parse(raw_query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.into_owned());
    match from_header.map(str::to_owned).or(from_query) {
        None => Ok(0),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::invalid("Last-Event-ID (or after) must be a stream sequence number")),
    }
}

/// The SSE frame for one watch event: its `kind` is the event name, its
/// sequence the id, a [`WatchEventJson`] the data.
pub fn frame(item: &proto::WatchEvent) -> Event {
    let data = json::watch_event(item);
    let event = Event::default()
        .id(item.sequence.to_string())
        .event(data.kind.as_str());
    match serde_json::to_string(&data) {
        Ok(text) => event.data(text),
        // Serialising plain strings and numbers does not fail; were it to,
        // the client still learns the sequence and can read the request.
        Err(_) => event.data("{}"),
    }
}

/// Request changes as server-sent events.
///
/// Event names: `requested`, `voted`, `granted`, `denied`, `expired`,
/// `cancelled`, and `updated` (catch-up views after a resume), each with a
/// `WatchEvent` as data; `error`, with an `Error` as data, then the end of
/// the stream when the control plane ends it. Each event's id is a stream
/// sequence: reconnect with `Last-Event-ID` (or `?after=`) to resume.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this stream sequence."),
        ("after" = Option<u64>, Query, description = "As `Last-Event-ID`, for clients that cannot set it; \
                                                     the header wins."),
    ),
    responses(
        (status = 200, description = "An event stream; each event's data is a `WatchEvent`.",
            body = WatchEventJson, content_type = "text/event-stream"),
        (status = 400, description = "`Last-Event-ID` or `after` is not a sequence number \
                                      (`invalid_argument`).", body = ErrorJson),
        (status = 403, description = "Not in a reviewer group (`not_a_reviewer`).", body = ErrorJson),
        Refusals,
    ),
    security(("bearer" = []), ("session" = [])),
)]
pub async fn events(
    State(app): State<crate::State>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let caller = app.auth.caller(&headers).await?;
    let after = resume_after(&headers, raw.as_deref())?;
    let watch = app.control.watch(&caller.token, after).await?;
    app.metrics.event_streams_open.inc();
    let open = Open(app.metrics.clone());
    let identity = caller.identity;
    // Dropping the response (the client went away) drops the watch with it.
    let stream = futures::stream::unfold(Some((watch, open)), move |state| {
        let identity = identity.clone();
        async move {
            let (mut watch, open) = state?;
            loop {
                match watch.message().await {
                    Ok(Some(item)) => {
                        let visible = item.request.as_ref().is_some_and(|r| may_review(&identity, r));
                        if visible {
                            return Some((Ok(frame(&item)), Some((watch, open))));
                        }
                    }
                    Ok(None) => return None,
                    Err(status) => {
                        // Tell the client why, then end: it reconnects with
                        // Last-Event-ID and misses nothing.
                        let e = ApiError::from(status);
                        let data =
                            serde_json::to_string(&ErrorJson::new(e.code, e.message)).unwrap_or_default();
                        return Some((Ok(Event::default().event("error").data(data)), None));
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_point() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_after(&h, None).unwrap(), 0);
        assert_eq!(resume_after(&h, Some("after=42")).unwrap(), 42);
        h.insert("last-event-id", "7".parse().unwrap());
        assert_eq!(resume_after(&h, Some("after=42")).unwrap(), 7, "the header wins");
        h.insert("last-event-id", "x".parse().unwrap());
        assert!(resume_after(&h, None).is_err());
    }
}
