//! The accept loop shared by the mock and the daemon.
//!
//! axum's `serve` would do, but owning the loop lets us set `TCP_NODELAY`
//! (small SSE events must not wait for Nagle), speak HTTP/1.1 and h2c on
//! one port, drain connections on shutdown with a deadline, and tell each
//! request when its bytes reached this host ([`Arrived`]).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long in-flight connections get to finish after shutdown is asked.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// When a request's bytes reached this host (the kernel's receive stamp
/// of the read that completed its head, see [`super::arrival`]): a
/// request extension, absent where the kernel gave no stamp. The mock
/// stamps a request received at this instant, not when its handler got
/// to run, so that its log is the truth on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub std::time::Instant);

/// Serve `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = super::arrival::StampedTcp::new(stream);
        let arrivals = stream.arrivals();
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(at) = arrivals.arrived() {
                    req.extensions_mut().insert(Arrived(at));
                }
                // A router is always ready: no poll_ready before the call.
                tower_service::Service::call(&mut app.clone(), req)
            });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_GRACE, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::mono_ns;
    use std::io::{BufRead, BufReader, Read, Write};

    /// When the handler says the request arrived (`mono_ns`), 0 without a
    /// stamp.
    async fn arrival(a: Option<axum::Extension<Arrived>>) -> String {
        let now = mono_ns();
        a.map_or(0, |a| now - a.0.0.elapsed().as_nanos() as u64)
            .to_string()
    }

    fn send(conn: &mut BufReader<std::net::TcpStream>) {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
    }

    /// The body of the answer to the request last sent on `conn`.
    fn answer(conn: &mut BufReader<std::net::TcpStream>) -> u64 {
        let mut len = 0;
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap().parse().unwrap()
    }

    /// The server's only thread is blocked when a request comes in: its
    /// handler runs late, yet says when the request arrived, not when it
    /// got to run.
    #[tokio::test]
    async fn a_request_is_dated_when_it_arrived_not_when_its_handler_ran() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(arrival));
        let server = tokio::spawn(serve(listener, app, CancellationToken::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel::<u64>();
        let client = std::thread::spawn(move || {
            let mut conn = BufReader::new(std::net::TcpStream::connect(addr).unwrap());
            // The kernel turns stamping on for the whole system a moment
            // after the first socket asks: until then, requests carry
            // none. Ask on this one connection until one does.
            let mut tries = 0;
            loop {
                send(&mut conn);
                if answer(&mut conn) != 0 {
                    break;
                }
                tries += 1;
                assert!(tries < 1000, "no request was ever stamped");
                std::thread::sleep(Duration::from_millis(1));
            }
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let before = mono_ns();
            send(&mut conn);
            sent_tx.send(before).unwrap();
            answer(&mut conn)
        });
        // The warm-up needs the server: wait off this thread.
        tokio::task::spawn_blocking(move || ready_rx.recv().unwrap())
            .await
            .unwrap();
        // Now hold this runtime's only thread until the request is
        // written, and a little longer: the server cannot read it before.
        go_tx.send(()).unwrap();
        let sent = sent_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let unblocked = mono_ns();
        let arrived = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        assert!(
            arrived < unblocked,
            "dated {} µs after the server could first run",
            (arrived - unblocked) / 1000
        );
        assert!(
            arrived + 1_000_000 >= sent,
            "dated {} µs before it was sent",
            (sent - arrived) / 1000
        );
        server.abort();
    }
}
