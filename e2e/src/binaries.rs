//! Locating binaries: the control plane's, built by `e2e/controlplane/build.sh`, and the
//! workspace's own (the controller, the plugin), built by cargo for tests in other crates.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Environment variable that names the directory holding the binaries, overriding the
/// build script's cache directory.
pub const BIN_DIR_ENV: &str = "COLDSITE_K8S_BIN";

/// The binaries every control plane needs, those of the upstream controllers a site runs
/// without nodes, and the registry the README publishes the image to.
pub const REQUIRED: [&str; 8] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "helm",
    "volsync",
    "snapshot-controller",
    "registry",
];

/// The directory with `etcd`, `kube-apiserver`, `kube-controller-manager`, `kubectl`,
/// `helm`, `volsync` and `snapshot-controller`, and upstream's CRDs in `crds/`.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Path of the build script, inside this crate.
    pub fn build_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh")
    }

    /// Finds the binaries: `$COLDSITE_K8S_BIN` if set, else the cache directory that
    /// `build.sh --print-bin-dir` names. Fails with instructions when any is missing.
    pub fn locate() -> Result<Self> {
        let script = Self::build_script();
        let (dir, origin) = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) if !dir.is_empty() => (PathBuf::from(dir), format!("${BIN_DIR_ENV}")),
            _ => {
                let out = Command::new("bash")
                    .arg(&script)
                    .arg("--print-bin-dir")
                    .output()
                    .with_context(|| format!("running `bash {} --print-bin-dir`", script.display()))?;
                if !out.status.success() {
                    bail!(
                        "`bash {} --print-bin-dir` failed ({}): {}",
                        script.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let dir = String::from_utf8(out.stdout)
                    .context("build.sh --print-bin-dir printed non-UTF-8")?
                    .trim()
                    .to_owned();
                (PathBuf::from(dir), format!("`{} --print-bin-dir`", script.display()))
            }
        };
        Self::verified(dir, &origin)
    }

    /// Uses the binaries in `dir` after checking they are all there; `origin` says
    /// where `dir` came from, for the error message.
    pub fn verified(dir: PathBuf, origin: &str) -> Result<Self> {
        let script = Self::build_script();
        let mut missing: Vec<&str> = REQUIRED.iter().copied().filter(|b| !dir.join(b).is_file()).collect();
        if !dir.join("crds").is_dir() {
            missing.push("crds/");
        }
        if !missing.is_empty() {
            bail!(
                "control-plane binaries missing in {} (from {origin}): {}.\n\
                 Build them first with `bash {}` (a cold build takes many minutes; \
                 later runs reuse the cache), or point ${BIN_DIR_ENV} at a directory that has them.",
                dir.display(),
                missing.join(", "),
                script.display(),
            );
        }
        Ok(Self { dir })
    }

    /// Uses the binaries in `dir` as they are (no check).
    pub fn from_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory holding the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Upstream's CRDs of VolSync, external-snapshotter and KubeVirt, as the build script
    /// collected them at their pinned versions.
    pub fn crds_dir(&self) -> PathBuf {
        self.dir.join("crds")
    }

    /// Path of binary `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Builds binary `bin` of workspace package `package` with the cargo running this test
/// (same profile and target dir) and returns its path. For tests of a crate that does not
/// own the binary, so `CARGO_BIN_EXE_*` does not name it.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(&workspace)
        .status()
        .with_context(|| format!("running cargo build for {bin}"))?;
    if !status.success() {
        bail!("building {bin} ({package}) failed");
    }
    // A test binary is target/<profile>/deps/<name>-<hash>; binaries sit beside deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("the target directory")?;
    let path = profile_dir.join(bin);
    if !path.is_file() {
        bail!("cargo built {bin} but there is no {}", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_build_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("etcd"), "").expect("write");
        let err = Binaries::verified(dir.path().to_owned(), "a test")
            .expect_err("binaries are missing")
            .to_string();
        assert!(err.contains("kube-apiserver"), "{err}");
        assert!(!err.contains("etcd,"), "{err}");
        assert!(err.contains("controlplane/build.sh"), "{err}");
        assert!(err.contains(BIN_DIR_ENV), "{err}");
    }
}
