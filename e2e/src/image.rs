//! What coldsite ships, as `dist/build.sh` writes it: the controller's image (an OCI
//! archive, read with the image-spec types of `oci-spec`), and the plugin's tarball and krew
//! manifest. Tests take the controller out of the image, so what they run is what ships.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use oci_spec::image::{Config, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

/// The version every crate, the image's tag and the chart's appVersion share.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The folder `dist/build.sh` writes to (it prints it itself).
pub fn dist_dir() -> Result<PathBuf> {
    let script = crate::manifests::repo_root().join("dist/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .output()
        .with_context(|| format!("running {} --print-dir", script.display()))?;
    ensure!(out.status.success(), "{} --print-dir failed", script.display());
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// A file `dist/build.sh` made, or an error that says to run it.
pub fn dist_file(name: &str) -> Result<PathBuf> {
    let path = dist_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{} is missing: run dist/build.sh (./test.sh and .ci/run do) to build what coldsite ships",
        path.display()
    );
    Ok(path)
}

/// The plugin tarball's file name for this version.
pub fn plugin_tarball_name() -> String {
    format!("kubectl-coldsite-{VERSION}-linux-amd64.tar.gz")
}

/// One entry of an image layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Path inside the image, without a leading `/` or `./`.
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub is_dir: bool,
}

/// An image in an OCI archive, unpacked into a temporary folder.
pub struct ImageArchive {
    dir: tempfile::TempDir,
    digest: String,
    manifest: ImageManifest,
    config: ImageConfiguration,
}

impl ImageArchive {
    /// The controller's image of this version, as `dist/build.sh` wrote it.
    pub fn controller() -> Result<Self> {
        Self::open(&dist_file(&format!("coldsite-controller-{VERSION}.oci.tar"))?, VERSION)
    }

    /// Opens the image tagged `tag` in the OCI archive at `archive`.
    pub fn open(archive: &Path, tag: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
        tar::Archive::new(file)
            .unpack(dir.path())
            .with_context(|| format!("unpacking {}", archive.display()))?;
        let index = ImageIndex::from_file(dir.path().join("index.json")).context("the archive's index.json")?;
        let descriptor = index
            .manifests()
            .iter()
            .find(|m| ref_name(m) == Some(tag))
            .with_context(|| format!("{} has no image tagged {tag}", archive.display()))?;
        let manifest = ImageManifest::from_file(blob_path(dir.path(), descriptor)).context("the image manifest")?;
        let config = ImageConfiguration::from_file(blob_path(dir.path(), manifest.config()))
            .context("the image configuration")?;
        let digest = descriptor.digest().to_string();
        Ok(Self {
            dir,
            digest,
            manifest,
            config,
        })
    }

    /// The manifest's digest: the image's identity in a registry (the archive's own bytes
    /// also carry the time it was written).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The image's runtime configuration (user, entrypoint, environment, labels).
    pub fn config(&self) -> Result<&Config> {
        self.config
            .config()
            .as_ref()
            .context("the image has no runtime configuration")
    }

    /// The image's labels.
    pub fn labels(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .config()?
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    /// Every entry of every layer, bottom layer first.
    pub fn files(&self) -> Result<Vec<ImageFile>> {
        let mut files = Vec::new();
        for layer in self.manifest.layers() {
            let mut archive = tar::Archive::new(self.layer_reader(layer)?);
            for entry in archive.entries()? {
                let entry = entry?;
                let header = entry.header();
                files.push(ImageFile {
                    path: clean(&entry.path()?.to_string_lossy()),
                    mode: header.mode()?,
                    uid: header.uid()?,
                    is_dir: header.entry_type().is_dir(),
                });
            }
        }
        Ok(files)
    }

    /// Copies file `path` of the image to `dest` (made executable), from the top layer that
    /// has it.
    pub fn extract(&self, path: &str, dest: &Path) -> Result<PathBuf> {
        for layer in self.manifest.layers().iter().rev() {
            let mut archive = tar::Archive::new(self.layer_reader(layer)?);
            for entry in archive.entries()? {
                let mut entry = entry?;
                if clean(&entry.path()?.to_string_lossy()) == clean(path) {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data)?;
                    std::fs::write(dest, data)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
                    return Ok(dest.to_owned());
                }
            }
        }
        bail!("the image has no file {path}")
    }

    fn layer_reader(&self, layer: &Descriptor) -> Result<Box<dyn Read>> {
        let file = std::fs::File::open(blob_path(self.dir.path(), layer))?;
        Ok(match layer.media_type() {
            MediaType::ImageLayer => Box::new(file),
            MediaType::ImageLayerGzip => Box::new(flate2::read::GzDecoder::new(file)),
            other => bail!("layer media type {other} is not read here"),
        })
    }
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.opencontainers.image.ref.name"))
        .map(String::as_str)
}

fn blob_path(dir: &Path, descriptor: &Descriptor) -> PathBuf {
    let digest = descriptor.digest();
    dir.join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}
