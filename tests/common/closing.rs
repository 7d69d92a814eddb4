//! A raw HTTP/1.1 SSE server with the connection habits of real servers:
//! it closes kept-alive connections after every response (llama.cpp's
//! server), refuses a second request on a connection (closes without
//! answering), closes idle connections after a timeout (uvicorn), and
//! counts the connections and requests it saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Habits {
    /// Close this long after each streamed response, without having said
    /// `Connection: close`.
    pub close_after_response: Option<Duration>,
    /// Keep the connection open after a response, but close it without a
    /// word when a second request arrives on it.
    pub one_request_per_connection: bool,
    /// Close a connection idle (between requests) for this long.
    pub idle_close: Option<Duration>,
    /// The `Keep-Alive` header value sent, if any.
    pub keep_alive: Option<String>,
    /// Status to answer with; non-200 gets a small JSON body.
    pub status: u16,
    pub tokens: u32,
    /// Send the headers and a role chunk, then nothing until vanished.
    pub hang: bool,
}

impl Default for Habits {
    fn default() -> Self {
        Self {
            close_after_response: None,
            one_request_per_connection: false,
            idle_close: None,
            keep_alive: None,
            status: 200,
            tokens: 8,
            hang: false,
        }
    }
}

pub struct Closing {
    pub url: String,
    pub connections: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    /// Requests on a connection that the server closed without answering.
    pub refused: Arc<AtomicU64>,
    gone: tokio_util::sync::CancellationToken,
}

impl Closing {
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
    /// The server goes away: its listener and every connection close at
    /// once, mid-stream or not.
    pub fn vanish(&self) {
        self.gone.cancel();
    }
}

pub async fn start(h: Habits) -> Closing {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let out = Closing {
        url: format!("http://{addr}/v1/chat/completions"),
        connections: Arc::new(AtomicU64::new(0)),
        requests: Arc::new(AtomicU64::new(0)),
        refused: Arc::new(AtomicU64::new(0)),
        gone: tokio_util::sync::CancellationToken::new(),
    };
    let gone = out.gone.clone();
    let (conns, reqs, refused) = (
        out.connections.clone(),
        out.requests.clone(),
        out.refused.clone(),
    );
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                a = l.accept() => match a { Ok((s, _)) => s, Err(_) => return },
                _ = gone.cancelled() => return,
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let (h, reqs, refused, gone) = (h.clone(), reqs.clone(), refused.clone(), gone.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = serve(s, h, reqs, refused) => {}
                    _ = gone.cancelled() => {}
                }
            });
        }
    });
    out
}

async fn serve(mut s: TcpStream, h: Habits, reqs: Arc<AtomicU64>, refused: Arc<AtomicU64>) {
    let _ = s.set_nodelay(true);
    let mut served = 0u32;
    let mut buf = Vec::new();
    loop {
        let read = read_request(&mut s, &mut buf);
        let got = match h.idle_close {
            Some(idle) => match tokio::time::timeout(idle, read).await {
                Ok(r) => r,
                Err(_) => return, // idle too long: close
            },
            None => read.await,
        };
        if !got {
            return;
        }
        if served >= 1 && h.one_request_per_connection {
            refused.fetch_add(1, Ordering::SeqCst);
            return; // close without answering
        }
        reqs.fetch_add(1, Ordering::SeqCst);
        served += 1;
        if h.hang {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
            let _ = s
                .write_all(format!("{head}{:x}\r\n{role}\r\n", role.len()).as_bytes())
                .await;
            std::future::pending::<()>().await;
        }
        if s.write_all(response(&h).as_bytes()).await.is_err() {
            return;
        }
        if let Some(d) = h.close_after_response {
            tokio::time::sleep(d).await;
            return;
        }
    }
}

fn response(h: &Habits) -> String {
    let ka = h
        .keep_alive
        .as_ref()
        .map(|v| format!("keep-alive: {v}\r\n"))
        .unwrap_or_default();
    if h.status != 200 {
        let body = r#"{"error":{"message":"busy"}}"#;
        return format!(
            "HTTP/1.1 {} Busy\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{ka}\r\n{body}",
            h.status,
            body.len()
        );
    }
    let mut events = String::from(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    );
    for _ in 0..h.tokens {
        events.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n");
    }
    events.push_str(&format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        h.tokens
    ));
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n{ka}\r\n{:x}\r\n{events}\r\n0\r\n\r\n",
        events.len()
    )
}

/// Read one request (headers + content-length body) into `buf`, keeping
/// any bytes after it. False when the peer closed.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                buf.drain(..h + 4 + len);
                return true;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
