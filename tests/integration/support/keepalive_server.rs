//! A token endpoint written on plain TCP, for one behaviour a framework
//! hides: a server that closes a keep-alive connection once it has been idle
//! for `idle_close` (Node closes after 5 s, many proxies sooner). A request
//! that arrives on a connection idle for longer is dropped unanswered, as a
//! request that crosses the server's FIN is in real life: the client sees
//! the connection close after it sent the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub struct KeepAliveServer {
    pub addr: SocketAddr,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl KeepAliveServer {
    /// Issues tokens that live `lifetime` for any refresh token.
    pub async fn start(idle_close: Duration, lifetime: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (a, d) = (answered.clone(), dropped.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, d) = (a.clone(), d.clone());
                tokio::spawn(serve(stream, idle_close, lifetime, a, d));
            }
        });
        KeepAliveServer {
            addr,
            answered,
            dropped,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Requests answered with a token.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Requests that arrived on a connection the server had given up on.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

async fn serve(
    stream: TcpStream,
    idle_close: Duration,
    lifetime: Duration,
    answered: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
) {
    let mut reader = BufReader::new(stream);
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        if idle_since.is_some_and(|since| since.elapsed() > idle_close) {
            dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let n = answered.fetch_add(1, Ordering::SeqCst);
        let token = format!(
            r#"{{"access_token":"keepalive-{n}","expires_in":{},"token_type":"Bearer"}}"#,
            lifetime.as_secs()
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{token}",
            token.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
        idle_since = Some(Instant::now());
    }
}
