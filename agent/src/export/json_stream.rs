//! Large JSON API responses, written as the client reads them: one
//! container's entry at a time, serialized when hyper asks for the next
//! frame. A recursive `/api/v2.0/stats` of every sample on a big node
//! never exists in memory whole (it was 4.8 MB at 306 containers, and 40
//! unread ones held 404 MB); a client that stops reading stops the
//! serializing, and holds only the entries not yet written, as `Arc`s
//! into state the agent keeps anyway. Each frame is a few containers'
//! worth of work on the reactor, so `/healthz` is not held up behind it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Serialize;

/// A frame is sent once it holds this much.
const FRAME: usize = 64 * 1024;

/// `"key":value`, serialized.
pub fn entry(key: &str, value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let written = serde_json::to_writer(&mut out, key).and_then(|()| {
        out.push(b':');
        serde_json::to_writer(&mut out, value)
    });
    if let Err(e) = written {
        // Only a map with keys that are not strings fails, which no
        // response has.
        tracing::error!(error = %e, key, "serializing an API response entry failed");
        out.clear();
        let _ = serde_json::to_writer(&mut out, key);
        out.extend_from_slice(b":null");
    }
    out
}

/// `value`, serialized (see [`entry`]).
pub fn item(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serializing an API response item failed");
        b"null".to_vec()
    })
}

/// A JSON object of the entries `next` makes (each `"key":value`, see
/// [`entry`]), in the order it makes them.
pub fn object<F>(next: F) -> Response
where
    F: FnMut() -> Option<Vec<u8>> + Send + Unpin + 'static,
{
    stream(*b"{}", next)
}

/// A JSON array of the items `next` makes (see [`item`]).
pub fn array<F>(next: F) -> Response
where
    F: FnMut() -> Option<Vec<u8>> + Send + Unpin + 'static,
{
    stream(*b"[]", next)
}

fn stream<F>(brackets: [u8; 2], next: F) -> Response
where
    F: FnMut() -> Option<Vec<u8>> + Send + Unpin + 'static,
{
    let body = Stream {
        next,
        brackets,
        state: State::Opening,
    };
    let mut response = Body::new(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

enum State {
    Opening,
    Entries,
    Done,
}

struct Stream<F> {
    next: F,
    /// `{}` or `[]`.
    brackets: [u8; 2],
    state: State,
}

impl<F> Stream<F>
where
    F: FnMut() -> Option<Vec<u8>>,
{
    /// The next frame: entries until it is [`FRAME`] long, then the
    /// closing bracket after the last.
    fn frame(&mut self) -> Option<Bytes> {
        let mut out = Vec::with_capacity(FRAME);
        loop {
            match self.state {
                State::Done => break,
                State::Opening | State::Entries => {
                    let first = matches!(self.state, State::Opening);
                    if first {
                        out.push(self.brackets[0]);
                        self.state = State::Entries;
                    }
                    match (self.next)() {
                        Some(e) => {
                            if !first {
                                out.push(b',');
                            }
                            out.extend_from_slice(&e);
                        }
                        None => {
                            out.push(self.brackets[1]);
                            self.state = State::Done;
                            break;
                        }
                    }
                }
            }
            if out.len() >= FRAME {
                break;
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

impl<F> http_body::Body for Stream<F>
where
    F: FnMut() -> Option<Vec<u8>> + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.frame().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn text(r: Response) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn entries_make_one_object_over_many_frames() {
        let mut left = 3_000u32;
        let r = object(move || {
            left = left.checked_sub(1)?;
            Some(entry(&format!("/c{left}"), &vec![left; 10]))
        });
        let body = text(r).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 3_000);
        assert_eq!(v["/c7"], serde_json::json!(vec![7; 10]));
        assert!(body.len() > 2 * FRAME, "{} bytes", body.len());
        assert_eq!(text(object(|| None)).await, "{}");
        let mut n = 0;
        let r = array(move || {
            n += 1;
            (n <= 3).then(|| item(&n))
        });
        assert_eq!(text(r).await, "[1,2,3]");
        assert_eq!(text(array(|| None)).await, "[]");
    }

    /// Nothing is serialized before the client asks for it.
    #[tokio::test]
    async fn entries_are_made_as_frames_are_read() {
        use http_body::Body as _;
        let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let r = object(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(entry("k", &"v".repeat(1_000)))
        });
        let mut body = r.into_body();
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 0);
        let frame = std::pin::Pin::new(&mut body)
            .frame()
            .await
            .unwrap()
            .unwrap();
        assert!(frame.data_ref().unwrap().len() >= FRAME);
        let after_one = made.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (60..=70).contains(&after_one),
            "{after_one} entries for one frame"
        );
        assert!(!body.is_end_stream());
    }
}
