//! The README, command by command. Every command of "Day one on real clusters" runs as
//! written, in order, in `bash`, against three real API servers: the management cluster
//! and the sites `hq` and `dr`. The README's other commands are run (the offline ones) or
//! found in `.ci/run` (the demo and the test suite).
//!
//! What the test supplies, because these clusters have no nodes:
//! - KubeVirt, VolSync, CSI snapshots and kubelets at both sites: the site simulator, with
//!   HQ's disks and the example's VMs (`examples/exchange/primary-site`) already running
//!   in namespace `exchange`, as the README assumes;
//! - the controller's Pod: nothing runs the chart's Deployment, so right after its
//!   `helm install` the test runs the image's entrypoint as a process with a token of the
//!   Deployment's ServiceAccount and the Deployment's arguments. The README's commands
//!   succeed only if the chart's RBAC is enough;
//! - a kubeconfig with contexts `mgmt`, `hq` and `dr`, and `kubectl` and `helm` on PATH;
//! - `target/dist` as `dist/build.sh` wrote it, and `registry.example.com`: a real registry
//!   (CNCF Distribution) on loopback that skopeo reaches under that name over verified TLS,
//!   through an HTTPS proxy (`coldsite_e2e::registry`). The README's
//!   `skopeo copy` pushes the image there, and the plugin is installed from the tarball;
//! - the controller's Pod (next item) runs the binary of the image the Deployment names,
//!   pulled back from that registry, as a kubelet would;
//! - the example's two endpoints outside these clusters, in a copy of `examples/exchange`:
//!   the readiness probes are dropped (simulated VMs have no reachable addresses) and the
//!   webhook URL points at a loopback receiver that checks the signature with the
//!   example's key. Every other file is the shipped one, byte for byte.
//!
//! DR starts without the VolumeSnapshotClass its Site names; before the README's first
//! `status`, the test checks that the ProtectedVMs say so and creates it.
//!
//! A person re-runs `status rplan/exchange` until the plan is Ready, `points` until the
//! mailbox server has an app-consistent point, and `status <run>` until the run waits at its
//! gate; so does the test. `<run>` is the name `test` printed.
//!
//! After the README: the chart's ServiceAccount is refused what the chart does not grant,
//! and a scheduled drill runs (cron, autoApprove, status.lastDrill, keepFor cleanup; the
//! plan's status observes each edit's generation).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use coldsite_e2e::chart::{client_from, start_chart_controller};
use coldsite_e2e::exchange::{
    ControllerProcess, WebhookReceiver, dynamic, virtual_machines, volume_snapshots, wait_for,
};
use coldsite_e2e::image::{ImageArchive, VERSION, dist_dir};
use coldsite_e2e::manifests::{apply, read_documents, repo_root};
use coldsite_e2e::registry::Registry;
use coldsite_e2e::simulator::{self, SimConfig, Simulator};
use coldsite_e2e::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// A shell command of the README and the section it is in.
#[derive(Debug, Clone)]
struct Command {
    section: String,
    line: String,
}

/// The commands of the README's ```sh blocks: continuation lines joined, comments and blank
/// lines dropped.
fn readme_commands(text: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let (mut section, mut in_sh, mut pending) = (String::new(), false, String::new());
    for raw in text.lines() {
        if !in_sh {
            if let Some(h) = raw.strip_prefix("## ") {
                section = h.trim().to_owned();
            } else if raw.trim() == "```sh" {
                in_sh = true;
            }
            continue;
        }
        if raw.trim() == "```" {
            in_sh = false;
            continue;
        }
        let line = raw.trim();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        let command = strip_comment(&command).split_whitespace().collect::<Vec<_>>().join(" ");
        if !command.is_empty() {
            out.push(Command {
                section: section.clone(),
                line: command,
            });
        }
    }
    out
}

/// The command without a trailing `# comment` (none of the README's quote a `#`).
fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.starts_with('#') => "",
        None => line,
    }
}

#[test]
fn readme_commands_are_parsed() {
    let text =
        "## A\n```sh\nfoo --x \\\n  --y   # says why\n# only a comment\n\nbar <run>\n```\n## B\n```sh\nbaz\n```\n";
    let got: Vec<(String, String)> = readme_commands(text).into_iter().map(|c| (c.section, c.line)).collect();
    assert_eq!(
        got,
        [
            ("A".to_owned(), "foo --x --y".to_owned()),
            ("A".to_owned(), "bar <run>".to_owned()),
            ("B".to_owned(), "baz".to_owned())
        ]
    );
}

const DAY_ONE: &str = "Day one on real clusters";
const NS: &str = "exchange";
/// Where coldsite puts the test copies and the scripts of the plan's namespace.
const TEST_NS: &str = "coldsite-test-exchange";
const SCRIPTS_NS: &str = "coldsite-scripts-exchange";
/// The registry the README pushes the image to.
const REGISTRY: &str = "registry.example.com";

/// Three clusters, a working directory like the repository's, and a shell for the README.
struct World {
    mgmt: ControlPlane,
    hq: ControlPlane,
    dr: ControlPlane,
    dir: tempfile::TempDir,
    path: String,
    registry: Registry,
}

impl World {
    async fn start() -> Result<Self> {
        let (mgmt, hq, dr) = tokio::try_join!(
            ControlPlane::start(ControlPlaneOptions::new("mgmt")),
            ControlPlane::start(ControlPlaneOptions::new("hq")),
            ControlPlane::start(ControlPlaneOptions::new("dr")),
        )?;
        let dir = tempfile::Builder::new().prefix("coldsite-readme-").tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        for (name, target) in [
            ("kubectl", mgmt.binaries().path("kubectl")),
            ("helm", mgmt.binaries().path("helm")),
        ] {
            std::os::unix::fs::symlink(target, bin.join(name))?;
        }
        std::os::unix::fs::symlink(repo_root().join("charts"), dir.path().join("charts"))?;
        std::fs::create_dir_all(dir.path().join("target"))?;
        std::os::unix::fs::symlink(dist_dir()?, dir.path().join("target/dist"))?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        // Where the README puts the plugin; only what the README installs is there.
        let path = format!(
            "{}:{}:{}",
            bin.display(),
            dir.path().join("home/.local/bin").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        let registry = Registry::start(mgmt.binaries(), REGISTRY).await?;
        let world = Self {
            mgmt,
            hq,
            dr,
            dir,
            path,
            registry,
        };
        world.write_kubeconfig()?;
        Ok(world)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// One kubeconfig with a context per cluster, as a person with three clusters has;
    /// the current context is `hq`, so a README that forgets to switch fails.
    fn write_kubeconfig(&self) -> Result<()> {
        use kube::config::Kubeconfig;
        let mut merged = Kubeconfig::default();
        for (name, cp) in [("mgmt", &self.mgmt), ("hq", &self.hq), ("dr", &self.dr)] {
            let mut kc = Kubeconfig::from_yaml(cp.kubeconfig_yaml())?;
            for c in &mut kc.clusters {
                c.name = name.to_owned();
            }
            for u in &mut kc.auth_infos {
                u.name = format!("{name}-admin");
            }
            for c in &mut kc.contexts {
                c.name = name.to_owned();
                if let Some(ctx) = c.context.as_mut() {
                    ctx.cluster = name.to_owned();
                    ctx.user = Some(format!("{name}-admin"));
                }
            }
            kc.current_context = None;
            merged = merged.merge(kc)?;
        }
        merged.current_context = Some("hq".into());
        merged.api_version = Some("v1".into());
        merged.kind = Some("Config".into());
        coldsite_e2e::chart::write_kubeconfig(&self.kubeconfig(), &serde_yaml_ng::to_string(&merged)?)
    }

    /// Runs one command line in bash in the working directory; fails unless it exits 0.
    async fn sh(&self, line: &str, timeout: Duration) -> Result<String> {
        let home = self.dir.path().join("home");
        let child = tokio::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", line])
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .envs(self.registry.envs())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting `{line}`"))?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .with_context(|| format!("`{line}` did not finish within {timeout:?}"))??;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        ensure!(
            out.status.success(),
            "`{line}` failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        Ok(stdout + &stderr)
    }

    /// Re-runs a command, as a person would, until its output shows `want`.
    async fn sh_until(&self, line: &str, want: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.sh(line, Duration::from_secs(60)).await?;
            if out.contains(want) {
                return Ok(out);
            }
            ensure!(
                Instant::now() < deadline,
                "`{line}` did not show {want:?} within {timeout:?}; last output:\n{out}"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

/// The controller as a kubelet would run it: the image the chart's Deployment names, pulled
/// from the registry the README pushed it to, checked against the Pod's security context,
/// and its entrypoint taken out.
async fn pulled_controller(world: &World, mgmt: &Client) -> Result<PathBuf> {
    let pod = Api::<Deployment>::namespaced(mgmt.clone(), "coldsite-system")
        .get("coldsite")
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .context("the Deployment's pod template")?;
    let container = pod.containers.first().context("the Deployment's container")?;
    let reference = container.image.clone().unwrap_or_default();
    ensure!(
        reference == format!("{REGISTRY}/coldsite/coldsite-controller:{VERSION}"),
        "the Deployment runs {reference}, not the image the README pushed"
    );
    let archive = world.dir.path().join("pulled.oci.tar");
    tokio::task::block_in_place(|| world.registry.pull(&reference, &archive, VERSION))?;
    let image = ImageArchive::open(&archive, VERSION)?;
    let config = image.config()?;
    let entrypoint = config.entrypoint().clone().unwrap_or_default();
    ensure!(
        entrypoint.len() == 1 && container.command.is_none(),
        "the image's entrypoint {entrypoint:?} runs with the Deployment's args alone"
    );
    let run_as = container
        .security_context
        .as_ref()
        .and_then(|c| c.run_as_user)
        .or_else(|| pod.security_context.as_ref().and_then(|c| c.run_as_user))
        .context("the Pod sets no runAsUser")?;
    ensure!(
        config.user().as_deref() == Some(format!("{run_as}:{run_as}").as_str()),
        "the image's user {:?} is not the Pod's runAsUser {run_as}",
        config.user()
    );
    image.extract(&entrypoint[0], &world.dir.path().join("coldsite-controller"))
}

/// The sites as the README finds them: KubeVirt's, VolSync's and the snapshot CRDs with
/// VolSync and the snapshot-controller running, the storage and snapshot classes, and HQ
/// running the Exchange VMs on their disks in namespace `exchange`.
async fn prepare_sites(world: &World, hq: &Client, dr: &Client) -> Result<()> {
    tokio::try_join!(world.hq.ensure_site(), world.dr.ensure_site())?;
    // The storage and snapshot classes the example's Sites name, but DR's snapshot class:
    // see `forgotten_snapshot_class`.
    for (c, class) in [(hq, "ceph-rbd"), (dr, "dr-ssd")] {
        apply(
            c,
            &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": class},
                    "provisioner": simulator::csi::DRIVER}),
            "",
        )
        .await??;
    }
    snapshot_class(hq, "ceph-rbd-snap").await?;
    apply(
        hq,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        NS,
    )
    .await??;
    for vm in ["dc01", "exch-mbx01", "exch-cas01"] {
        for disk in ["system", "data"] {
            let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("{vm}-{disk}")},
                             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ceph-rbd",
                                      "resources": {"requests": {"storage": "20Gi"}}}});
            apply(hq, &pvc, NS).await??;
        }
    }
    for vm in read_documents(&repo_root().join("examples/exchange/primary-site/virtual-machines.yaml"))? {
        apply(hq, &vm, NS).await??;
    }
    Ok(())
}

async fn snapshot_class(site: &Client, name: &str) -> Result<()> {
    apply(
        site,
        &json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                "metadata": {"name": name}, "driver": simulator::csi::DRIVER, "deletionPolicy": "Delete"}),
        "",
    )
    .await??;
    Ok(())
}

/// A day-one mistake: DR lacks the VolumeSnapshotClass its Site names. Protection must say
/// so in the ProtectedVMs' Ready condition, then go on once the class exists.
async fn forgotten_snapshot_class(mgmt: &Client, dr: &Client) -> Result<()> {
    let pvms: Api<ProtectedVM> = Api::namespaced(mgmt.clone(), NS);
    let message = wait_for(
        "ProtectedVM dc01 to name the missing snapshot class",
        Duration::from_secs(180),
        || async {
            let st = pvms.get("dc01").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready" && c.message.contains("\"dr-ssd-snap\" not found"))
                .map(|c| c.message.clone()))
        },
    )
    .await?;
    ensure!(
        message.contains("VolumeSnapshot exchange/") && message.contains("at contoso-dr"),
        "{message}"
    );
    snapshot_class(dr, "dr-ssd-snap").await
}

/// `examples/exchange` in the working directory: the shipped files, but the plan's
/// readiness probes dropped and its webhook pointed at `hook`. Returns the webhook key.
fn copy_example(dir: &Path, hook: std::net::SocketAddr) -> Result<String> {
    let from = repo_root().join("examples/exchange");
    let to = dir.join("examples/exchange");
    std::fs::create_dir_all(&to)?;
    let mut key = None;
    for entry in std::fs::read_dir(&from)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().context("file name")?.to_owned();
        let mut docs = read_documents(&path)?;
        let mut changed = false;
        for d in &mut docs {
            match d["kind"].as_str() {
                Some("RecoveryPlan") => {
                    for g in d["spec"]["groups"].as_array_mut().into_iter().flatten() {
                        if let Some(r) = g["readiness"].as_object_mut() {
                            changed |= r.remove("probes").is_some();
                        }
                        for a in g["post"].as_array_mut().into_iter().flatten() {
                            if a["script"]["webhook"].is_object() {
                                a["script"]["webhook"]["url"] = json!(format!("http://{hook}/mount-databases"));
                                changed = true;
                            }
                        }
                    }
                }
                Some("Secret") => key = d["stringData"]["hmac-key"].as_str().map(str::to_owned),
                _ => {}
            }
        }
        if changed {
            let text: Vec<String> = docs.iter().map(serde_yaml_ng::to_string).collect::<Result<_, _>>()?;
            std::fs::write(to.join(&name), text.join("---\n"))?;
        } else {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    key.context("the example has no webhook key Secret")
}

/// `recoveryrun.coldsite.io/<name> created: …` → name.
fn created_run(out: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("recoveryrun.coldsite.io/"))
        .and_then(|l| l.split(' ').next())
        .map(str::to_owned)
        .with_context(|| format!("no run name in the output of `test`:\n{out}"))
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => bail!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// What coldsite's identity at a site (the kubeconfig `link` stored for the Site) must not
/// do there: read any Secret, even the replication key it wrote (both ends derive it from
/// the master key on the management cluster), or list them, cluster-wide or in a VM's
/// namespace. Replication ran all the same before this is checked.
async fn check_site_identity(mgmt: &Client, site: &str) -> Result<()> {
    let spec = Api::<Site>::all(mgmt.clone()).get(site).await?.spec;
    let r = spec.cluster.context("the Site has a kubeconfig")?.kubeconfig_secret_ref;
    let secret = Api::<Secret>::namespaced(mgmt.clone(), &r.namespace)
        .get(&r.name)
        .await?;
    let kubeconfig = secret
        .data
        .and_then(|d| d.get(&r.key).cloned())
        .context("the kubeconfig Secret's key")?;
    let identity = client_from(std::str::from_utf8(&kubeconfig.0)?).await?;
    forbidden(
        "list Secrets at the site",
        Api::<Secret>::all(identity.clone()).list(&ListParams::default()).await,
    )?;
    forbidden(
        "list Secrets of the VMs' namespace at the site",
        Api::<Secret>::namespaced(identity.clone(), NS)
            .list(&ListParams::default())
            .await,
    )?;
    forbidden(
        "read even its own replication key at the site",
        Api::<Secret>::namespaced(identity, NS).get("coldsite-dc01-rsync").await,
    )?;
    Ok(())
}

/// What the chart's ServiceAccount must not do on the management cluster.
async fn check_token_scope(token: &Client, elsewhere: &str) -> Result<()> {
    let secrets = |ns: &str| Api::<Secret>::namespaced(token.clone(), ns);
    forbidden(
        "get a Secret outside the chart's namespaces",
        secrets(elsewhere).get("not-for-coldsite").await,
    )?;
    forbidden(
        "list the kubeconfig Secrets",
        secrets("coldsite-system").list(&ListParams::default()).await,
    )?;
    forbidden(
        "list Secrets of the plan's namespace",
        secrets(NS).list(&ListParams::default()).await,
    )?;
    // Sites, plans and ProtectedVMs belong to people. Dry runs: RBAC is checked first.
    forbidden(
        "patch a Site",
        Api::<Site>::all(token.clone())
            .patch(
                "contoso-hq",
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({"spec": {"testNamespace": "elsewhere"}})),
            )
            .await,
    )?;
    forbidden(
        "patch a RecoveryPlan",
        Api::<RecoveryPlan>::namespaced(token.clone(), NS)
            .patch(
                "exchange",
                &PatchParams::default().dry_run(),
                &Patch::Merge(json!({"spec": {"groups": []}})),
            )
            .await,
    )?;
    forbidden(
        "delete a ProtectedVM",
        Api::<ProtectedVM>::namespaced(token.clone(), NS)
            .delete(
                "dc01",
                &DeleteParams {
                    dry_run: true,
                    ..DeleteParams::default()
                },
            )
            .await,
    )?;
    forbidden(
        "read another Lease",
        Api::<Lease>::namespaced(token.clone(), "coldsite-system")
            .get("someone-else")
            .await,
    )?;
    forbidden(
        "list VMs on the management cluster, which is not a site",
        virtual_machines(token, NS).list(&ListParams::default()).await,
    )
}

/// Lines of the controller's log that report a refusal, other than those about `allowed`.
fn refusals(log: &Path, allowed: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden") && !l.contains(allowed))
        .map(str::to_owned)
        .collect()
}

/// Nothing a test failover made is left at the recovery site.
async fn test_copies_left(dr: &Client) -> Result<usize> {
    let all = ListParams::default();
    let snapshots = volume_snapshots(dr, TEST_NS);
    Ok(virtual_machines(dr, TEST_NS).list(&all).await?.items.len()
        + Api::<PersistentVolumeClaim>::namespaced(dr.clone(), TEST_NS)
            .list(&all)
            .await?
            .items
            .len()
        + snapshots.list(&all).await?.items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_day_one_commands_work_as_written() -> Result<()> {
    let started = Instant::now();
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let commands = readme_commands(&readme);
    let (day_one, others): (Vec<Command>, Vec<Command>) = commands.into_iter().partition(|c| c.section == DAY_ONE);
    for want in [
        "skopeo copy oci-archive:target/dist/",
        "sha256sum -c",
        "tar -xzf target/dist/kubectl-coldsite-",
        "helm --kube-context mgmt install",
        "kubectl coldsite link",
        "kubectl apply",
        " test exchange",
        " approve <run>",
        " report <run>",
        " cleanup <run>",
    ] {
        ensure!(
            day_one.iter().any(|c| c.line.contains(want)),
            "README's {DAY_ONE:?} has no command with {want:?}: {day_one:#?}"
        );
    }

    // The README's commands outside day one: .ci/run runs the demo and the tests; the
    // offline commands run here, from the repository root.
    let ci = std::fs::read_to_string(repo_root().join(".ci/run"))?;
    for c in &others {
        if c.line.starts_with("cargo run -p coldsite-cli --") {
            let out = tokio::process::Command::new("bash")
                .args(["-c", &c.line])
                .current_dir(repo_root())
                .output()
                .await?;
            ensure!(
                out.status.success(),
                "README command `{}` failed:\n{}{}",
                c.line,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            ensure!(
                ci.lines()
                    .any(|l| l.trim().trim_end_matches(';') == c.line || l.contains(&c.line)),
                "README command `{}` ({:?}) is neither run by this test nor by .ci/run",
                c.line,
                c.section
            );
        }
    }

    let world = World::start().await?;
    let (mgmt, hq, dr) = (
        world.mgmt.client().await?,
        world.hq.client().await?,
        world.dr.client().await?,
    );
    prepare_sites(&world, &hq, &dr).await?;
    // The management cluster gets the simulator's kubelet for the drill's script Job.
    let _simulator = Simulator::start(
        vec![
            world.hq.sim_site("contoso-hq").await?,
            world.dr.sim_site("contoso-dr").await?,
            world.mgmt.sim_site("management").await?,
        ],
        SimConfig::default().with_namespaces([NS, TEST_NS, SCRIPTS_NS]),
    );
    let receiver_key: &'static str = Box::leak(
        read_documents(&repo_root().join("examples/exchange/40-webhook-secret.yaml"))?
            .first()
            .and_then(|d| d["stringData"]["hmac-key"].as_str().map(str::to_owned))
            .context("the example's webhook key")?
            .into_boxed_str(),
    );
    let webhook = WebhookReceiver::start(receiver_key).await?;
    let copied_key = copy_example(world.dir.path(), webhook.addr)?;
    ensure!(copied_key == receiver_key, "one key");

    let mut controller: Option<(ControllerProcess, String)> = None;
    let result = async {
        let mut run: Option<String> = None;
        for c in &day_one {
            let line = match &run {
                Some(name) => c.line.replace("<run>", name),
                None if c.line.contains("<run>") => bail!("`{}` needs a run, but none was started before it", c.line),
                None => c.line.clone(),
            };
            let t0 = Instant::now();
            let out = if line.contains(" status ") && line.contains("rplan/") {
                forgotten_snapshot_class(&mgmt, &dr).await?;
                world.sh_until(&line, "Ready  True", Duration::from_secs(300)).await?
            } else if line.contains(" points ") {
                // exch-mbx01 asks for app-consistent points: the chart's site identity freezes
                // its guest through HQ's aggregation layer.
                world.sh_until(&line, " app ", Duration::from_secs(240)).await?
            } else if line.contains(" status ") && run.is_some() && !line.contains("--watch") {
                world
                    .sh_until(&line, "Waiting for approval of confirm-ad-replication", Duration::from_secs(240))
                    .await?
            } else {
                world.sh(&line, Duration::from_secs(300)).await?
            };
            eprintln!("readme: `{line}` ({:.1}s)", t0.elapsed().as_secs_f64());

            if line.starts_with("helm --kube-context mgmt install") {
                ensure!(out.contains("STATUS: deployed"), "{out}");
                // No kubelet: the test plays the Deployment's Pod, from the image it names.
                let binary = pulled_controller(&world, &mgmt).await?;
                controller =
                    Some(start_chart_controller(&world.mgmt, "coldsite-system", "coldsite", &binary, "readme").await?);
            } else if line.contains("coldsite link") {
                ensure!(
                    world.registry.loopback_tunnels() > 0,
                    "the plugin ignored HTTPS_PROXY: no tunnel to the API server went through it"
                );
                ensure!(
                    out.contains("authenticates there as system:serviceaccount:coldsite-system:coldsite-site"),
                    "{out}"
                );
            } else if line.contains(" test exchange") {
                run = Some(created_run(&out)?);
            } else if line.contains(" approve ") {
                ensure!(out.contains("goes on now"), "{out}");
            } else if line.contains("--watch") {
                ensure!(out.contains("Phase Succeeded"), "{out}");
            } else if line.contains(" report ") {
                let html = std::fs::read_to_string(world.dir.path().join("report.html"))
                    .context("the report the README writes")?;
                ensure!(html.contains("<svg") && html.contains("RTO"), "an HTML report with a chart");
                for step in [
                    "identity/vm/dc01/power-on",
                    "mailbox/pre/confirm-ad-replication",
                    "mailbox/post/mount-databases",
                    "client-access/vm/exch-cas01/ready",
                ] {
                    ensure!(html.contains(&format!("data-step=\"{step}\"")), "no bar for {step}");
                }
            } else if line.contains(" cleanup ") {
                ensure!(out.contains("nothing the test created remains"), "{out}");
                ensure!(test_copies_left(&dr).await? == 0, "the test left copies at DR");
                proven_by(&mgmt, controller.as_ref().map(|c| &c.0), run.as_deref()).await?;
            }
        }
        let calls = webhook.calls();
        ensure!(
            calls.len() == 1 && calls[0].signature_valid,
            "one signed webhook call: {calls:?}"
        );
        let (process, token_kubeconfig) = controller.as_ref().context("the README never installed the controller")?;

        // The chart's ServiceAccount is refused the rest, and a Site naming a Secret out of
        // its reach becomes unreachable without anything else being refused.
        let elsewhere = "not-coldsite";
        apply(
            &mgmt,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}}),
            elsewhere,
        )
        .await??;
        apply(
            &mgmt,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-for-coldsite"},
                    "stringData": {"kubeconfig": world.dr.kubeconfig_yaml()}}),
            elsewhere,
        )
        .await??;
        check_token_scope(&client_from(token_kubeconfig).await?, elsewhere).await?;
        check_site_identity(&mgmt, "contoso-dr").await?;
        apply(
            &mgmt,
            &json!({"apiVersion": "coldsite.io/v1alpha1", "kind": "Site", "metadata": {"name": "outside"},
                    "spec": {"cluster": {"kubeconfigSecretRef": {"namespace": elsewhere, "name": "not-for-coldsite", "key": "kubeconfig"}}}}),
            "",
        )
        .await??;
        let sites: Api<Site> = Api::all(mgmt.clone());
        let message = wait_for("Site outside to be unreachable", Duration::from_secs(60), || async {
            let st = sites.get("outside").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .find(|c| c.type_ == "Reachable" && c.status == "False")
                .map(|c| c.message.clone()))
        })
        .await?;
        ensure!(message.to_ascii_lowercase().contains("forbidden"), "{message}");
        let refused = refusals(&process.log, "outside");
        ensure!(refused.is_empty(), "the controller was refused:\n{}", refused.join("\n"));

        drill(&world, &mgmt, &dr).await.context("a scheduled drill")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let (Err(e), Some((process, _))) = (&result, &controller) {
        eprintln!("--- controller log tail ---\n{}\n{e:#}", process.log_tail(60));
    }
    eprintln!("readme: {:.0}s", started.elapsed().as_secs_f64());
    result
}

/// The plan records the test as its last success after the run is gone, and the
/// controller exports when that was for the plan-not-tested alert.
async fn proven_by(mgmt: &Client, controller: Option<&ControllerProcess>, run: Option<&str>) -> Result<()> {
    let (controller, run) = (controller.context("no controller")?, run.context("no test run")?);
    let plans: Api<RecoveryPlan> = Api::namespaced(mgmt.clone(), NS);
    let last = wait_for(
        "the plan to record its last successful test",
        Duration::from_secs(30),
        || async {
            let st = plans.get("exchange").await?.status.unwrap_or_default();
            Ok(st.last_successful_test.filter(|t| t.name == run))
        },
    )
    .await?;
    let finished = last.completion_time.context("lastSuccessfulTest.completionTime")?;
    let series = format!(r#"coldsite_plan_proven_timestamp_seconds{{namespace="{NS}",plan="exchange"}} "#);
    let value = controller.metric(&series).await;
    ensure!(
        value == finished.0.as_second() as f64,
        "{series}{value}, the test finished at {finished:?}"
    );
    Ok(())
}

/// A drill every minute, kept 20 s, with a script on the management cluster (granted by a
/// `helm upgrade`): it starts on the cron, passes its gate by autoApprove, lands in
/// status.lastDrill, and is cleaned up at both sites and on the management cluster when
/// keepFor runs out, even with drills suspended.
async fn drill(world: &World, mgmt: &Client, dr: &Client) -> Result<()> {
    let plans: Api<RecoveryPlan> = Api::namespaced(mgmt.clone(), NS);
    let runs: Api<RecoveryRun> = Api::namespaced(mgmt.clone(), NS);
    world
        .sh(
            "helm --kube-context mgmt upgrade coldsite charts/coldsite -n coldsite-system --reuse-values \
             --set 'rbac.managementScripts.namespaces={exchange}'",
            Duration::from_secs(60),
        )
        .await?;
    let mut groups = plans.get("exchange").await?.spec.groups;
    let last_group = groups.last_mut().context("the plan's groups")?;
    last_group.post.push(serde_json::from_value(json!({
        "name": "drill-report", "when": ["TestFailover"],
        "script": {"site": "management", "job": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "report", "image": "registry.contoso.com/dr/report:1",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}}}}
    }))?);
    // The example's own weekly drill may have come due during the test (and failed, if its
    // VMs were not yet protected): this drill is one of the every-minute schedule.
    let earlier = plans
        .get("exchange")
        .await?
        .status
        .and_then(|s| s.last_drill)
        .and_then(|d| d.run);
    plans
        .patch(
            "exchange",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"groups": groups, "drill": {"schedule": "* * * * *", "keepFor": "20s"}}})),
        )
        .await?;
    let script_objects = || async {
        let labelled = ListParams::default().labels("coldsite.io/run-uid");
        let jobs = dynamic(mgmt, SCRIPTS_NS, "batch", "v1", "Job", "jobs")
            .list(&labelled)
            .await?
            .items
            .len();
        let maps = dynamic(mgmt, SCRIPTS_NS, "", "v1", "ConfigMap", "configmaps")
            .list(&labelled)
            .await?
            .items
            .len();
        Ok::<_, anyhow::Error>(jobs + maps)
    };
    let last = wait_for("a drill to finish", Duration::from_secs(240), || async {
        let p = plans.get("exchange").await?;
        Ok(p.status.and_then(|s| s.last_drill).filter(|d| d.run != earlier))
    })
    .await?;
    ensure!(last.result == "Succeeded", "the drill: {last:?}");
    ensure!(
        last.message.is_none() && last.rto_seconds.is_some() && last.rpo_seconds.is_some_and(|s| s >= 0),
        "a drill that succeeded has its RTO and the RPO of the points it restored: {last:?}"
    );
    ensure!(
        script_objects().await? == 2,
        "the drill's Job and its context ConfigMap on the management cluster"
    );
    let name = last.run.clone().context("lastDrill names its run")?;
    ensure!(name.starts_with("exchange-drill-"), "{name}");
    plans
        .patch(
            "exchange",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"drill": {"suspend": true}}})),
        )
        .await?;
    if let Some(r) = runs.get_opt(&name).await? {
        ensure!(
            r.spec.approvals == ["confirm-ad-replication"],
            "autoApprove: {:?}",
            r.spec.approvals
        );
    }
    wait_for(
        "the drill to be cleaned up after keepFor",
        Duration::from_secs(150),
        || async {
            let left = runs.list(&ListParams::default()).await?.items.len();
            Ok((left == 0 && test_copies_left(dr).await? == 0 && script_objects().await? == 0).then_some(()))
        },
    )
    .await?;
    // The status speaks of the plan as last edited (suspended): observedGeneration, on the
    // status and on each condition, is the plan's generation.
    let p = wait_for(
        "the plan's status to observe its last edit",
        Duration::from_secs(30),
        || async {
            let p = plans.get("exchange").await?;
            let generation = p.metadata.generation;
            let st = p.status.clone().unwrap_or_default();
            let current = st.observed_generation == generation
                && !st.conditions.is_empty()
                && st.conditions.iter().all(|c| c.observed_generation == generation);
            Ok(current.then_some(p))
        },
    )
    .await?;
    // A drill of the next tick may have started before the suspension; either way the
    // record of the last one outlives its run.
    let last = p.status.and_then(|s| s.last_drill);
    ensure!(
        last.as_ref()
            .and_then(|d| d.run.as_deref())
            .is_some_and(|r| r.starts_with("exchange-drill-")),
        "lastDrill outlives its run: {last:?}"
    );
    Ok(())
}
