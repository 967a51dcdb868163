//! Readiness probes against a recovered VM's address: a TCP connect, or an HTTP GET whose
//! status is below 400.

use std::net::SocketAddr;
use std::time::Duration;

use coldsite_engine::fabric::Recovery;
use coldsite_engine::model::ProbeModel;
use tokio::net::TcpStream;

use crate::http_client::HttpClient;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the probe passes now.
pub async fn probe(http: &HttpClient, p: &ProbeModel, req: &Recovery<'_>) -> bool {
    let Some(ip) = crate::kubevirt::fabric::probe_address(req, p) else {
        return false;
    };
    match p {
        ProbeModel::Tcp { port, .. } => reachable(SocketAddr::new(ip, *port)).await,
        ProbeModel::Http { port, path, https, .. } => {
            let scheme = if *https { "https" } else { "http" };
            let url = format!("{scheme}://{}{path}", SocketAddr::new(ip, *port));
            matches!(http.get_status(&url, PROBE_TIMEOUT).await, Ok(code) if code < 400)
        }
    }
}

pub async fn reachable(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn serve(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_status_decides() {
        let http = HttpClient::new().unwrap();
        let ok = serve("200 OK").await;
        let bad = serve("503 Service Unavailable").await;
        assert_eq!(
            http.get_status(&format!("http://{ok}/owa/healthcheck.htm"), PROBE_TIMEOUT)
                .await
                .unwrap(),
            200
        );
        assert_eq!(
            http.get_status(&format!("http://{bad}/"), PROBE_TIMEOUT).await.unwrap(),
            503
        );
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(reachable(addr).await);
        drop(listener);
        assert!(!reachable(addr).await);
    }
}
