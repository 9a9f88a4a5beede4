//! A tiny hyper 1 / tokio HTTP/1.1 server with the gateway's I/O stack, used to
//! exercise and benchmark the capture programs:
//!   cargo run --release --example hyper_server -- 127.0.0.1:38418
//! GET /... → 200 "ok\n" (Content-Length); /chunked → chunked body;
//! /slow → headers, then body 50 ms later; /sse → an SSE-like stream of 64
//! small chunks in bursts and pauses (see `sse`); POST → echoes the body length.
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::POST {
        let n = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        return Ok(Response::new(
            Full::new(Bytes::from(format!("got {n} bytes\n"))).boxed(),
        ));
    }
    if path == "/sse" {
        return Ok(Response::new(sse().boxed()));
    }
    if path == "/chunked" || path == "/slow" {
        let slow = path == "/slow";
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                if slow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = tx.send(Bytes::from(format!("part {i}\n"))).await;
            }
        });
        return Ok(Response::new(ChanBody(rx).boxed()));
    }
    Ok(Response::new(
        Full::new(Bytes::from_static(b"ok\n")).boxed(),
    ))
}

/// Events of the `/sse` stream: 64 small events. The first 24 are queued
/// before the response is returned, so hyper sends the head and 16 of them
/// in one writev (3 iovecs per chunk: 49 iovecs); then a pause, bursts of 8
/// (24 iovecs per writev) with pauses, and single events 5 ms apart — the
/// shape of a relayed LLM stream.
fn sse() -> ChanBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let event = |i: usize| {
        Bytes::from(format!(
            "event: delta\ndata: {{\"i\":{i},\"text\":\"tok{i}\"}}\n\n"
        ))
    };
    for i in 0..24 {
        let _ = tx.try_send(event(i));
    }
    tokio::spawn(async move {
        let mut i = 24;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for _ in 0..8 {
                let _ = tx.send(event(i)).await;
                i += 1;
            }
        }
        while i < 64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let _ = tx.send(event(i)).await;
            i += 1;
        }
    });
    ChanBody(rx)
}

/// A body fed by a channel: no size hint, so hyper sends it chunked.
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:38418".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!(
        "hyper_server listening on {addr} pid {}",
        std::process::id()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
