//! Shared test helpers: an in-process mock on 127.0.0.1:0, a plain HTTP
//! client that timestamps every body frame, datasets, and the binary.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmload::mock::{MockConfig, MockServer};
use llmload::sse::SseDecoder;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn start_mock(cfg: MockConfig) -> MockServer {
    init();
    MockServer::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

/// A response with every body frame's arrival time since the request.
pub struct Timed {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub frames: Vec<(Duration, Bytes)>,
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Timed {
    /// The SSE `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        d.feed(&self.body, |e| {
            out.push(String::from_utf8(e.data.to_vec()).unwrap());
            true
        })
        .unwrap();
        out
    }

    /// Arrival time of each `data:` event that carries content tokens.
    pub fn token_times(&self) -> Vec<Duration> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for (t, f) in &self.frames {
            d.feed(f, |e| {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(e.data) {
                    let c = &v["choices"][0];
                    let text = c["delta"]["content"]
                        .as_str()
                        .or(c["text"].as_str())
                        .unwrap_or("");
                    if !text.is_empty() {
                        out.push(*t);
                    }
                }
                true
            })
            .unwrap();
        }
        out
    }
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(c)
}

pub async fn post(url: &str, body: serde_json::Value) -> Timed {
    post_with(url, body, &[]).await
}

pub async fn post_with(url: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> Timed {
    let client = http_client();
    let mut b = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let t0 = Instant::now();
    let resp = client.request(req).await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    let mut all = Vec::new();
    let mut error = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    all.extend_from_slice(d);
                    frames.push((t0.elapsed(), d.clone()));
                }
            }
        }
    }
    Timed {
        status,
        headers,
        body: all,
        frames,
        error,
        elapsed: t0.elapsed(),
    }
}

pub async fn get(url: &str) -> (u16, String) {
    let client = http_client();
    let resp = client
        .request(
            http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .expect("GET sent");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn chat_body(max_tokens: u32, stream: bool, usage: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": "test-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"}
        ],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": stream,
    });
    if usage {
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}

/// The llmload binary built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llmload"))
}

/// The seed's minimal dataset, written to `dir`.
pub fn write_dataset(dir: &Path) -> PathBuf {
    let path = dir.join("conversations.json");
    std::fs::write(
        &path,
        serde_json::json!([
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [{"role": "user", "content": "Hello"}]},
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What's the weather?"}]},
            {"prompt_content": "You are a helpful AI assistant.",
             "cut_chat_history": [
                {"role": "user", "content": "Tell me about Python"},
                {"role": "assistant", "content": "Python is a programming language."},
                {"role": "system", "content": "skipped"},
                {"role": "user", "content": "What are its features?"}]}
        ])
        .to_string(),
    )
    .unwrap();
    path
}

/// The run directories under `root`.
pub fn run_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Width and height of a PNG, after decoding every row (so a truncated
/// or corrupt file fails).
pub fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG pixels decode");
    // A blank image would decode too: require some non-white pixels.
    let non_white = buf.iter().filter(|&&b| b < 200).count();
    assert!(non_white > 10_000, "PNG looks blank");
    (info.width, info.height)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}
