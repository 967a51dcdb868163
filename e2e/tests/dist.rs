//! What coldsite ships, as `dist/build.sh` built it: the controller's image (its config, its
//! files, a static binary that runs), the plugin's tarball with its sums and krew manifest,
//! the SBOM, and that a second build of the same commit gives the same image digest and the
//! same plugin tarball.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use coldsite_e2e::image::{ImageArchive, VERSION, dist_file, plugin_tarball_name};
use coldsite_e2e::manifests::repo_root;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};
use sha2::{Digest, Sha256};

/// The ELF program interpreter (the dynamic loader) `data` asks for, if any.
fn interpreter(data: &[u8]) -> Result<Option<String>> {
    let file = ElfFile64::<object::Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = file.endian();
    for header in file.elf_program_headers() {
        if header.p_type(endian) == elf::PT_INTERP {
            let bytes = header.data(endian, data).map_err(|()| anyhow::anyhow!("PT_INTERP"))?;
            return Ok(Some(String::from_utf8_lossy(bytes).trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

fn sha256_hex(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

fn git_head() -> Result<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root())
        .output()?;
    ensure!(out.status.success(), "git rev-parse HEAD failed");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn the_image_holds_one_static_binary_run_as_65532_and_says_where_it_comes_from() -> Result<()> {
    let image = ImageArchive::controller()?;
    let config = image.config()?;
    ensure!(
        config.user().as_deref() == Some("65532:65532"),
        "user: {:?}",
        config.user()
    );
    ensure!(
        config.entrypoint().as_deref() == Some(&["/coldsite-controller".to_owned()][..]),
        "entrypoint: {:?}",
        config.entrypoint()
    );
    ensure!(
        config
            .env()
            .iter()
            .flatten()
            .any(|e| e == "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "env: {:?}",
        config.env()
    );

    let labels = image.labels()?;
    let label = |k: &str| {
        labels
            .get(&format!("org.opencontainers.image.{k}"))
            .cloned()
            .unwrap_or_default()
    };
    ensure!(label("version") == VERSION, "version label: {labels:?}");
    ensure!(
        label("source") == env!("CARGO_PKG_REPOSITORY"),
        "source label: {labels:?}"
    );
    let revision = label("revision");
    ensure!(
        revision.trim_end_matches("-dirty") == git_head()?,
        "revision label {revision} is not this checkout's HEAD: run dist/build.sh again"
    );

    // Only the binary and the CA bundle: no shell, no libc, nothing to exec into.
    let files = image.files()?;
    let regular: BTreeSet<&str> = files.iter().filter(|f| !f.is_dir).map(|f| f.path.as_str()).collect();
    ensure!(
        regular == BTreeSet::from(["coldsite-controller", "etc/ssl/certs/ca-certificates.crt"]),
        "files in the image: {regular:?}"
    );
    ensure!(
        !regular.iter().any(|p| p.ends_with("sh")),
        "a shell in the image: {regular:?}"
    );
    let dir = tempfile::tempdir()?;
    let binary = image.extract("coldsite-controller", &dir.path().join("coldsite-controller"))?;
    ensure!(
        interpreter(&std::fs::read(&binary)?)?.is_none(),
        "the controller is dynamically linked"
    );
    let out = Command::new(&binary).arg("--version").output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && printed.contains(VERSION),
        "--version: {printed}"
    );
    Ok(())
}

#[test]
fn the_plugin_tarball_its_sums_and_the_krew_manifest_agree() -> Result<()> {
    let name = plugin_tarball_name();
    let tarball = dist_file(&name)?;
    let sum = sha256_hex(&tarball)?;
    let written = std::fs::read_to_string(dist_file(&format!("{name}.sha256"))?)?;
    ensure!(written == format!("{sum}  {name}\n"), "{name}.sha256: {written}");

    let mut entries = Vec::new();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&tarball)?);
    for entry in tar::Archive::new(gz).entries()? {
        let mut entry = entry?;
        let (path, mode, uid) = (
            entry.path()?.to_string_lossy().into_owned(),
            entry.header().mode()?,
            entry.header().uid()?,
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        ensure!(interpreter(&data)?.is_none(), "{path} is dynamically linked");
        entries.push((path, mode, uid));
    }
    ensure!(
        entries
            == [
                ("kubectl-coldsite".to_owned(), 0o755, 0),
                ("kubectl_complete-coldsite".to_owned(), 0o755, 0)
            ],
        "tarball entries: {entries:?}"
    );

    let manifest: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(dist_file("coldsite.yaml")?)?)?;
    ensure!(
        manifest["kind"] == "Plugin" && manifest["metadata"]["name"] == "coldsite",
        "{manifest}"
    );
    ensure!(manifest["spec"]["version"] == format!("v{VERSION}"), "{manifest}");
    let platform = &manifest["spec"]["platforms"][0];
    ensure!(
        platform["sha256"] == sum.as_str(),
        "krew sha256 {} != {sum}",
        platform["sha256"]
    );
    ensure!(
        platform["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/{name}"))),
        "krew uri: {}",
        platform["uri"]
    );
    ensure!(platform["bin"] == "kubectl-coldsite", "krew bin: {}", platform["bin"]);
    Ok(())
}

#[test]
fn the_sbom_lists_the_controllers_crates_and_the_sums_match() -> Result<()> {
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(dist_file(&format!(
        "coldsite-controller-{VERSION}.cdx.json"
    ))?)?)?;
    ensure!(sbom["bomFormat"] == "CycloneDX", "not CycloneDX: {}", sbom["bomFormat"]);
    let names: BTreeSet<&str> = sbom["components"]
        .as_array()
        .context("no components")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for crate_name in [
        "kube",
        "k8s-openapi",
        "tokio",
        "rustls",
        "prometheus",
        "coldsite-engine",
    ] {
        ensure!(names.contains(crate_name), "the SBOM lacks {crate_name}");
    }
    // The plugin's and the tests' own crates are not in the controller.
    ensure!(!names.contains("clap_complete"), "the SBOM lists the plugin's crates");

    let sums = std::fs::read_to_string(dist_file("SHA256SUMS")?)?;
    ensure!(sums.lines().count() == 3, "SHA256SUMS: {sums}");
    for line in sums.lines() {
        let (sum, file) = line.split_once("  ").context("a SHA256SUMS line")?;
        ensure!(sha256_hex(&dist_file(file)?)? == sum, "SHA256SUMS is wrong for {file}");
    }
    Ok(())
}

#[test]
fn a_second_build_of_the_same_commit_gives_the_same_image_and_tarball() -> Result<()> {
    let again = tempfile::tempdir()?;
    let out = Command::new("bash")
        .arg(repo_root().join("dist/build.sh"))
        .env("COLDSITE_DIST_DIR", again.path())
        .output()
        .context("running dist/build.sh")?;
    ensure!(
        out.status.success(),
        "dist/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = format!("coldsite-controller-{VERSION}.oci.tar");
    let (first, second) = (
        ImageArchive::open(&dist_file(&archive)?, VERSION)?,
        ImageArchive::open(&again.path().join(&archive), VERSION)?,
    );
    ensure!(
        first.digest() == second.digest(),
        "two builds of one commit gave images {} and {}",
        first.digest(),
        second.digest()
    );
    let name = plugin_tarball_name();
    ensure!(
        sha256_hex(&dist_file(&name)?)? == sha256_hex(&again.path().join(&name))?,
        "{name} differs between two builds of one commit"
    );
    Ok(())
}
