//! An HTTP CONNECT proxy, the kind `HTTPS_PROXY` names: it opens a tunnel
//! to the requested host and port and copies bytes both ways, without
//! seeing inside TLS. It records every target it was asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone)]
pub struct ConnectProxy {
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub async fn start(bind: SocketAddr) -> Self {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind the proxy on {bind}: {e}"));
        let proxy = ConnectProxy {
            addr: listener.local_addr().unwrap(),
            targets: Arc::default(),
        };
        let targets = proxy.targets.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, targets.clone()));
            }
        });
        proxy
    }

    /// Every `host:port` a client asked to be connected to, in order.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

async fn tunnel(client: TcpStream, targets: Arc<Mutex<Vec<String>>>) {
    let mut client = BufReader::new(client);
    let mut request = String::new();
    if client.read_line(&mut request).await.is_err() {
        return;
    }
    // The request's headers end with an empty line.
    loop {
        let mut header = String::new();
        match client.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut words = request.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    };
    targets.lock().unwrap().push(target.to_string());
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            .await;
        return;
    };
    if client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
