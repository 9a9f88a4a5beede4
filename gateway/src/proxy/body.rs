//! The response body the gateway sends: either bytes it made itself, or the
//! upstream's body relayed frame by frame as it arrives.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::api::ApiFlavor;
use crate::errors::error_body;
use crate::logging::LogTicket;

use super::usage_event::InjectedUsageFilter;

/// A relayed body failed and could not be ended cleanly; the connection to
/// the client is aborted so it sees an incomplete response, not a short one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RelayError(pub String);

/// Every response body the gateway produces, with the log ticket that is
/// completed when the body is done.
pub struct ResponseBody {
    kind: BodyKind,
    log: Option<Box<LogTicket>>,
    /// Removes the usage event the gateway asked for (after the log saw it).
    usage_filter: Option<InjectedUsageFilter>,
}

enum BodyKind {
    Full(Option<Bytes>),
    Relay(Box<RelayBody>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody {
            kind: BodyKind::Full((!bytes.is_empty()).then_some(bytes)),
            log: None,
            usage_filter: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Full(None),
            log: None,
            usage_filter: None,
        }
    }

    pub fn relay(relay: RelayBody) -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Relay(Box::new(relay)),
            log: None,
            usage_filter: None,
        }
    }

    /// The upstream was asked for stream usage on the client's behalf: the
    /// log reads the usage event, the client does not get it.
    pub fn remove_injected_usage(&mut self) {
        self.usage_filter = Some(InjectedUsageFilter::default());
    }

    /// Attaches the request's log ticket; it is sent when the body is dropped.
    pub fn attach_log(&mut self, ticket: Box<LogTicket>) {
        self.log = Some(ticket);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        loop {
            let polled = match &mut this.kind {
                BodyKind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
                BodyKind::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
            };
            if let Some(log) = this.log.as_mut() {
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            log.on_data(data);
                        }
                    }
                    Poll::Ready(None) => log.on_end(),
                    _ => {}
                }
            }
            let Some(filter) = this.usage_filter.as_mut() else {
                return polled;
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let kept = filter.push(data);
                        if !kept.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(kept))));
                        }
                        // All of it held or removed: read on.
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    return Poll::Ready(filter.finish().map(|rest| Ok(Frame::data(rest))));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.kind_is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            // Removing an event changes the length.
            BodyKind::Relay(_) if self.usage_filter.is_some() => SizeHint::new(),
            BodyKind::Relay(relay) => relay.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may stop polling once is_end_stream() says so: a body that
        // was fully sent counts as completed.
        let done = self.kind_is_done();
        if let Some(log) = self.log.as_mut() {
            if done {
                log.on_end();
            }
        }
    }
}

impl ResponseBody {
    fn kind_is_done(&self) -> bool {
        let held = self
            .usage_filter
            .as_ref()
            .is_some_and(|filter| !filter.is_empty());
        !held
            && match &self.kind {
                BodyKind::Full(data) => data.is_none(),
                BodyKind::Relay(relay) => relay.is_end_stream(),
            }
    }
}

/// How a relay reports a failure after the response has started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureSignal {
    /// A server-sent event in the API family's error shape, then a clean end:
    /// the SDKs turn it into an exception with the message.
    SseErrorEvent(ApiFlavor),
    /// Abort the response; the client sees an incomplete body.
    Abort,
}

/// The upstream's body, relayed one frame at a time with no buffering. A
/// silence longer than the idle timeout ends it. Dropping it (the client went
/// away) drops the upstream body, which closes the upstream connection and so
/// cancels the upstream request at once.
pub struct RelayBody {
    /// A frame already read (the gateway waits for the first byte before
    /// answering, so upstream failures before it become HTTP errors).
    first: Option<Frame<Bytes>>,
    upstream: Incoming,
    /// Armed the first time the upstream has nothing to give, so a body that
    /// is already complete costs no timer.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    on_failure: FailureSignal,
    provider: String,
    finished: bool,
    /// Held while the stream runs: counts against `max_concurrent_streams`.
    _stream_permit: Option<OwnedSemaphorePermit>,
}

impl RelayBody {
    pub fn new(
        first: Option<Frame<Bytes>>,
        upstream: Incoming,
        idle_timeout: Duration,
        on_failure: FailureSignal,
        provider: String,
        stream_permit: Option<OwnedSemaphorePermit>,
    ) -> RelayBody {
        RelayBody {
            first,
            upstream,
            idle: None,
            idle_timeout,
            on_failure,
            provider,
            finished: false,
            _stream_permit: stream_permit,
        }
    }

    fn fail(&mut self, reason: String) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        self.finished = true;
        tracing::warn!(provider = %self.provider, %reason, "upstream stream failed after the response started");
        let message = format!(
            "the upstream provider `{}` failed mid-response: {reason}",
            self.provider
        );
        match self.on_failure {
            FailureSignal::SseErrorEvent(flavor) => {
                Poll::Ready(Some(Ok(Frame::data(sse_error_event(flavor, &message)))))
            }
            FailureSignal::Abort => Poll::Ready(Some(Err(RelayError(message)))),
        }
    }
}

/// An error as a server-sent event: OpenAI streams carry a `data:` line with
/// an `error` object; Anthropic streams an `event: error`.
fn sse_error_event(flavor: ApiFlavor, message: &str) -> Bytes {
    let (event, kind) = match flavor {
        ApiFlavor::OpenAi => ("", "server_error"),
        ApiFlavor::Anthropic => ("event: error\n", "api_error"),
    };
    let body = error_body(flavor, kind, Some("upstream_stream_failed"), message);
    let mut text = String::with_capacity(event.len() + body.len() + 10);
    text.push_str(event);
    text.push_str("data: ");
    text.push_str(&String::from_utf8_lossy(&body));
    text.push_str("\n\n");
    Bytes::from(text)
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.as_mut().reset(Instant::now() + this.idle_timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => this.fail(format!("connection error: {err}")),
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(idle.as_mut().poll(cx));
                let secs = this.idle_timeout.as_secs_f64();
                this.fail(format!("no data for {secs}s (idle timeout)"))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.finished || self.upstream.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let upstream = self.upstream.size_hint();
        let first = self
            .first
            .as_ref()
            .and_then(|frame| frame.data_ref())
            .map_or(0, |data| data.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = upstream.upper() {
            hint.set_upper(upper + first);
        }
        hint.set_lower(upstream.lower() + first);
        hint
    }
}
