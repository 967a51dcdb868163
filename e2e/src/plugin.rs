//! `kubectl-coldsite` as a user calls it: a process with a kubeconfig and a namespace,
//! its output captured, killed if it outlives its timeout.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::process::Command;

use crate::workspace_binary;

/// The plugin against one cluster and namespace.
#[derive(Clone)]
pub struct Plugin {
    pub exe: PathBuf,
    pub kubeconfig: PathBuf,
    pub ns: String,
}

impl Plugin {
    /// The workspace's `kubectl-coldsite`, built if needed.
    pub async fn build(kubeconfig: PathBuf, ns: &str) -> Result<Self> {
        let exe = tokio::task::spawn_blocking(|| workspace_binary("coldsite-cli", "kubectl-coldsite")).await??;
        Ok(Plugin {
            exe,
            kubeconfig,
            ns: ns.to_owned(),
        })
    }

    /// Runs `kubectl-coldsite ARGS -n NS`.
    pub async fn run(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let child = Command::new(&self.exe)
            .args(args)
            .args(["-n", &self.ns])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl-coldsite {} did not finish within {timeout:?}", args.join(" ")))?
            .context("waiting for kubectl-coldsite")
    }

    /// Runs and expects success within a minute; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_within(args, Duration::from_secs(60)).await
    }

    pub async fn ok_within(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let out = self.run(args, timeout).await?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        ensure!(
            out.status.success(),
            "kubectl-coldsite {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" "),
            out.status
        );
        Ok(stdout)
    }

    /// Runs and expects a refusal; returns stderr.
    pub async fn refused(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, Duration::from_secs(60)).await?;
        ensure!(
            !out.status.success(),
            "kubectl-coldsite {} should have been refused; stdout:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
