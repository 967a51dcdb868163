//! A container registry on loopback, reached by the name a README command uses
//! (`registry.example.com`), over verified TLS, as a user reaches theirs:
//! - the registry: CNCF Distribution (built by `controlplane/build.sh`), serving HTTPS with a
//!   certificate for that name from a CA made for the test;
//! - the name does not resolve here, so skopeo goes through an HTTPS proxy
//!   (`HTTPS_PROXY`, as behind a corporate proxy): a CONNECT proxy on loopback that tunnels
//!   that name to the registry, and loopback addresses to themselves (the plugin, unlike
//!   Go programs, proxies loopback too), and refuses the rest;
//! - skopeo trusts the test's CA through `SSL_CERT_FILE` (Go's roots).
//!
//! The README's `skopeo copy` pushes to it as written, and the tests pull the image back
//! from it, as a kubelet would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Binaries;
use crate::controlplane::free_port;
use crate::pki::{serving, write_file};
use crate::process::{self, Spec};

/// The registry, its proxy and their files; stopped and removed when dropped.
pub struct Registry {
    child: Child,
    proxy: tokio::task::JoinHandle<()>,
    proxy_addr: SocketAddr,
    loopback_tunnels: Arc<AtomicUsize>,
    dir: PathBuf,
}

impl Registry {
    /// Starts a registry that answers to `name` for skopeo run with [`Registry::envs`].
    pub async fn start(binaries: &Binaries, name: &str) -> Result<Self> {
        let dir = process::make_temp_dir("registry")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let (ca, tls) = serving("coldsite-e2e-registry-ca", &[name])?;
        write_file(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
        write_file(&dir.join("tls.crt"), &tls.cert_pem, 0o644)?;
        write_file(&dir.join("tls.key"), &tls.key_pem, 0o600)?;
        let config = dir.join("config.yml");
        write_file(
            &config,
            &format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
                 http:\n  addr: {addr}\n  tls:\n    certificate: {dir}/tls.crt\n    key: {dir}/tls.key\n",
                root = dir.join("storage").display(),
                dir = dir.display()
            ),
            0o644,
        )?;
        let child = process::spawn(Spec {
            program: binaries.path("registry"),
            args: vec!["serve".into(), config.into_os_string()],
            envs: Vec::new(),
            cwd: dir.clone(),
            log: dir.join("registry.log"),
        })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy_addr = listener.local_addr()?;
        let loopback_tunnels = Arc::new(AtomicUsize::new(0));
        let proxy = tokio::spawn(connect_proxy(
            listener,
            format!("{name}:443"),
            addr,
            loopback_tunnels.clone(),
        ));
        let registry = Self {
            child,
            proxy,
            proxy_addr,
            loopback_tunnels,
            dir,
        };
        registry.wait_ready(addr, Duration::from_secs(30)).await?;
        Ok(registry)
    }

    /// The environment under which skopeo reaches this registry by its name: the proxy for
    /// HTTPS (Go never proxies loopback, so API servers and kubectl are unaffected) and the
    /// test CA as the only trusted root.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        let proxy = format!("http://{}", self.proxy_addr);
        vec![
            ("HTTPS_PROXY", proxy.clone()),
            ("https_proxy", proxy),
            ("SSL_CERT_FILE", self.dir.join("ca.crt").display().to_string()),
        ]
    }

    /// How many tunnels the proxy opened to loopback addresses other than the registry.
    pub fn loopback_tunnels(&self) -> usize {
        self.loopback_tunnels.load(Ordering::Relaxed)
    }

    /// Pulls `reference` (as the README names it) into an OCI archive at `dest`, tagged `tag`.
    pub fn pull(&self, reference: &str, dest: &Path, tag: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .envs(self.envs())
            .args(["copy", "--quiet", &format!("docker://{reference}")])
            .arg(format!("oci-archive:{}:{tag}", dest.display()))
            .output()
            .context("running skopeo (dist/build.sh installs it)")?;
        ensure!(
            out.status.success(),
            "skopeo could not pull {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    async fn wait_ready(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(addr).await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "the registry did not listen on {addr} within {timeout:?}: {}",
                crate::log_tail(&self.dir.join("registry.log"), 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.proxy.abort();
        process::kill(&mut self.child);
        process::remove_temp_dir(&self.dir);
    }
}

/// Tunnels `CONNECT <target>` to `upstream` and `CONNECT 127.0.0.1:<port>` to that port;
/// refuses every other request.
async fn connect_proxy(listener: TcpListener, target: String, upstream: SocketAddr, loopback: Arc<AtomicUsize>) {
    while let Ok((client, _)) = listener.accept().await {
        let (target, loopback) = (target.clone(), loopback.clone());
        tokio::spawn(async move {
            if let Err(e) = tunnel(client, &target, upstream, &loopback).await {
                tracing::debug!("registry proxy: {e:#}");
            }
        });
    }
}

async fn tunnel(mut client: TcpStream, target: &str, upstream: SocketAddr, loopback: &AtomicUsize) -> Result<()> {
    // The request head only: the client sends nothing more until it has the answer.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 8192, "request head too long");
        let byte = client.read_u8().await?;
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    let wanted = head
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    let to = match (wanted.first(), wanted.get(1)) {
        (Some(&"CONNECT"), Some(&t)) if t == target => Some(upstream),
        (Some(&"CONNECT"), Some(t)) => t
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .inspect(|_| {
                loopback.fetch_add(1, Ordering::Relaxed);
            }),
        _ => None,
    };
    let Some(to) = to else {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await?;
        return Ok(());
    };
    let mut server = TcpStream::connect(to).await?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
