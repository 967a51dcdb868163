//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, started from the binaries built by
//! `e2e/controlplane/build.sh`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::binaries::Binaries;
use crate::pki::{self, CertKey, Pki};
use crate::process::{self, Spec};

/// The controllers kube-controller-manager runs by default here: what the e2e tests
/// need (garbage collection, namespace deletion, Jobs and CronJobs, service accounts)
/// and nothing that would expect nodes.
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    // Binding of the PVs the simulated CSI provisioner creates, and PV and PVC protection.
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "namespace-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
];

/// Label put on namespaces made by [`ControlPlane::create_namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "coldsite.io/e2e-test";

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Short name (lowercase letters, digits, `-`), used in the kubeconfig and temp dir.
    pub name: String,
    /// Start kube-controller-manager (needed for garbage collection, Jobs, namespaces).
    pub controller_manager: bool,
    /// `--controllers` of kube-controller-manager.
    pub controllers: Vec<String>,
    /// Extra flags for kube-apiserver, e.g. `--feature-gates=...`.
    pub extra_apiserver_args: Vec<String>,
    /// Deadline for each component to become ready.
    pub startup_timeout: Duration,
}

impl ControlPlaneOptions {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            controller_manager: true,
            controllers: DEFAULT_CONTROLLERS.iter().map(|c| (*c).to_owned()).collect(),
            extra_apiserver_args: Vec::new(),
            startup_timeout: Duration::from_secs(180),
        }
    }
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self::new("primary")
    }
}

/// One component process of a control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    /// VolSync's controller, once the control plane serves as a site ([`crate::site`]).
    VolSync,
    /// external-snapshotter's snapshot-controller, likewise.
    SnapshotController,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::VolSync => "volsync",
            Component::SnapshotController => "snapshot-controller",
        }
    }
}

struct Running {
    component: Component,
    child: Child,
}

/// A running control plane. Dropping it kills its processes and removes its
/// temporary directory; processes also die with the test process.
pub struct ControlPlane {
    name: String,
    dir: PathBuf,
    binaries: Binaries,
    server_url: String,
    etcd_url: String,
    kubeconfig_path: PathBuf,
    kubeconfig_yaml: String,
    running: Mutex<Vec<Running>>,
    namespaces: AtomicU64,
    network: SiteNetwork,
    pub(crate) site: OnceCell<()>,
    /// What a restart needs to come back as the same cluster.
    boot: Boot,
}

/// How a control plane was started: kept to start it again on the same data, ports and
/// certificates.
struct Boot {
    options: ControlPlaneOptions,
    pki: Pki,
    ports: Ports,
}

static SHARED_PRIMARY: OnceCell<ControlPlane> = OnceCell::const_new();
static SHARED_RECOVERY: OnceCell<ControlPlane> = OnceCell::const_new();

impl ControlPlane {
    /// The control plane shared by all tests of this test binary: the management
    /// cluster, which is also the primary site. Started on first use.
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED_PRIMARY
            .get_or_try_init(|| Self::start(ControlPlaneOptions::new("primary")))
            .await
    }

    /// A second, independent control plane (its own etcd) shared by all tests of this
    /// test binary: the recovery site. Started on first use.
    pub async fn shared_recovery() -> Result<&'static ControlPlane> {
        SHARED_RECOVERY
            .get_or_try_init(|| Self::start(ControlPlaneOptions::new("recovery")))
            .await
    }

    /// Starts a new control plane owned by the caller.
    pub async fn start(options: ControlPlaneOptions) -> Result<Self> {
        let binaries = Binaries::locate()?;
        Self::start_with(binaries, options).await
    }

    /// Starts a new control plane from the given binaries.
    pub async fn start_with(binaries: Binaries, options: ControlPlaneOptions) -> Result<Self> {
        let name = options.name.clone();
        if name.is_empty()
            || name.len() > 40
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("invalid control plane name {name:?}: use 1-40 of [a-z0-9-]");
        }
        let started = Instant::now();
        let ports = Ports::pick()?;
        let etcd_port = ports.etcd_client;
        let pki = Pki::generate(&name).context("generating certificates")?;
        let dir = process::make_temp_dir(&name)?;
        let server_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig_yaml = kubeconfig(&name, &server_url, &pki.ca, pki::ADMIN_USER, &pki.admin);
        let cp = ControlPlane {
            network: SiteNetwork::next(),
            site: OnceCell::new(),
            boot: Boot {
                options: options.clone(),
                pki,
                ports,
            },
            kubeconfig_path: dir.join("admin.kubeconfig"),
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            name,
            dir,
            binaries,
            server_url,
            kubeconfig_yaml,
            running: Mutex::new(Vec::new()),
            namespaces: AtomicU64::new(0),
        };
        // On error `cp` is dropped here, which stops whatever was started.
        cp.boot(&cp.boot.options, &cp.boot.pki, &cp.boot.ports).await?;
        tracing::info!(
            name = %cp.name,
            server = %cp.server_url,
            dir = %cp.dir.display(),
            "control plane ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(cp)
    }

    async fn boot(&self, options: &ControlPlaneOptions, pki: &Pki, ports: &Ports) -> Result<()> {
        let files = pki.write(&self.dir.join("pki"))?;
        pki::write_file(&self.kubeconfig_path, &self.kubeconfig_yaml, 0o600)?;
        let kcm_kubeconfig = self.dir.join("controller-manager.kubeconfig");
        pki::write_file(
            &kcm_kubeconfig,
            &kubeconfig(
                &self.name,
                &self.server_url,
                &pki.ca,
                pki::CONTROLLER_MANAGER_USER,
                &pki.controller_manager,
            ),
            0o600,
        )?;
        let timeout = options.startup_timeout;

        // etcd
        let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
        self.spawn(
            Component::Etcd,
            vec![
                format!("--name={}", self.name),
                format!("--data-dir={}", self.dir.join("etcd-data").display()),
                format!("--listen-client-urls={}", self.etcd_url),
                format!("--advertise-client-urls={}", self.etcd_url),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}={peer}", self.name),
                "--initial-cluster-state=new".into(),
                // Test data is disposable: skip fsync, which dominates etcd latency.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let etcd_port = ports.etcd_client;
        self.wait_until(Component::Etcd, "/health", timeout, || etcd_healthy(etcd_port))
            .await?;

        // kube-apiserver
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_url),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.apiserver),
            format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", files.apiserver_cert.display()),
            format!("--tls-private-key-file={}", files.apiserver_key.display()),
            format!("--client-ca-file={}", files.ca_cert.display()),
            "--authorization-mode=RBAC".into(),
            // The aggregation layer, for KubeVirt's subresources API (played by the simulator).
            format!("--requestheader-client-ca-file={}", files.front_proxy_ca.display()),
            format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_USER),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", files.front_proxy_client_cert.display()),
            format!("--proxy-client-key-file={}", files.front_proxy_client_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", files.sa_pub.display()),
            format!("--service-account-signing-key-file={}", files.sa_key.display()),
            // Only allocated from, never routed: the site simulator resolves Service addresses
            // itself. Each control plane has a range of its own, so that sites sharing a
            // network (`SimConfig::shared_network`) can tell their ClusterIPs apart.
            format!("--service-cluster-ip-range={}", self.network.service_cidr),
            // There is no network behind the `kubernetes` Service; don't publish 127.0.0.1.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        args.extend(options.extra_apiserver_args.iter().cloned());
        self.spawn(Component::ApiServer, args)?;
        let client = self.client().await?;
        self.wait_until(Component::ApiServer, "/readyz", timeout, || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client.request_text(req).await?.trim() == "ok")
            }
        })
        .await?;

        // kube-controller-manager
        if options.controller_manager {
            let kcm = kcm_kubeconfig.display().to_string();
            self.spawn(
                Component::ControllerManager,
                vec![
                    format!("--kubeconfig={kcm}"),
                    // No --authentication/authorization-kubeconfig: its own HTTPS endpoint
                    // serves only /healthz and friends (always allowed), and the
                    // API server has no front-proxy CA for it to load.
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", ports.controller_manager),
                    format!("--cert-dir={}", self.dir.join("kcm-certs").display()),
                    "--leader-elect=false".into(),
                    format!("--controllers={}", options.controllers.join(",")),
                    "--use-service-account-credentials=true".into(),
                    format!("--service-account-private-key-file={}", files.sa_key.display()),
                    format!("--root-ca-file={}", files.ca_cert.display()),
                    format!("--cluster-name={}", self.name),
                    // Its controllers' clients default to 20 requests a second each: the
                    // PV binder then binds about five claims a second, which sets the pace
                    // of a site with thousands of disks (as clusters at scale raise it).
                    "--kube-api-qps=100".into(),
                    "--kube-api-burst=200".into(),
                    "--v=1".into(),
                ],
            )?;
            // The service-account controller creates `default` in every namespace: once it
            // exists in `default`, the controller manager is up and talking to the API.
            if options
                .controllers
                .iter()
                .any(|c| c == "serviceaccount-controller" || c == "serviceaccount" || c == "*")
            {
                let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                self.wait_until(
                    Component::ControllerManager,
                    "ServiceAccount default/default",
                    timeout,
                    || {
                        let sas = sas.clone();
                        async move { Ok(sas.get_opt("default").await?.is_some()) }
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    fn running(&self) -> MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spawn(&self, component: Component, args: Vec<String>) -> Result<()> {
        let child = process::spawn(Spec {
            program: self.binaries.path(component.name()),
            args: args.into_iter().map(OsString::from).collect(),
            envs: Vec::new(),
            cwd: self.dir.clone(),
            log: self.log_path(component),
        })?;
        self.running().push(Running { component, child });
        Ok(())
    }

    /// Polls `probe` until it returns true, failing early (with the log's tail) if the
    /// component exits, and at `timeout`.
    pub(crate) async fn wait_until<F, Fut>(
        &self,
        component: Component,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let started = Instant::now();
        let mut last_error: Option<anyhow::Error>;
        loop {
            if let Some(status) = self.exit_status(component) {
                return Err(self.startup_error(component, &format!("exited with {status}")));
            }
            match tokio::time::timeout(Duration::from_secs(10), probe()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => last_error = None,
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => last_error = Some(anyhow!("probe timed out")),
            }
            if started.elapsed() > timeout {
                let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
                return Err(self.startup_error(
                    component,
                    &format!("not ready ({what}) after {}s{why}", timeout.as_secs()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn exit_status(&self, component: Component) -> Option<std::process::ExitStatus> {
        self.running()
            .iter_mut()
            .find(|r| r.component == component)
            .and_then(|r| r.child.try_wait().ok().flatten())
    }

    fn startup_error(&self, component: Component, msg: &str) -> anyhow::Error {
        let log = self.log_path(component);
        let tail = log_tail(&log, 60);
        let text = format!(
            "{} of control plane '{}' {msg}\n--- last lines of {} ---\n{tail}--- end of log ---",
            component.name(),
            self.name,
            log.display()
        );
        eprintln!("coldsite-e2e: {text}");
        anyhow!(text)
    }

    /// The control plane's name ("primary", "recovery", ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// Path of the admin kubeconfig file (credentials embedded).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig (user in group `system:masters`), e.g. for a site Secret.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The temporary directory holding logs, certificates and etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of `component`.
    pub fn log_path(&self, component: Component) -> PathBuf {
        self.dir.join(format!("{}.log", component.name()))
    }

    /// Its Service ClusterIP range and the address pool of its simulated load balancer.
    pub fn network(&self) -> &SiteNetwork {
        &self.network
    }

    /// The binaries this control plane was started from (also kubectl and helm).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// A client with admin rights. Make one per test: a `kube::Client` belongs to the
    /// tokio runtime it was created in, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml).context("parsing admin kubeconfig")?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading admin kubeconfig")?;
        Client::try_from(config).context("building kube client")
    }

    /// Creates a namespace with a unique name starting with `prefix` and returns the
    /// name. Tests sharing a control plane isolate themselves this way.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let mut base: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        base.truncate(40);
        let base = base.trim_matches('-');
        let base = if base.is_empty() { "test" } else { base };
        let name = format!("{base}-{n}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), base.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client().await?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name} in '{}'", self.name))?;
        Ok(name)
    }

    /// `kubectl` with `KUBECONFIG` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.binaries.path("kubectl"));
        cmd.env("KUBECONFIG", &self.kubeconfig_path);
        cmd
    }

    /// `helm` with `KUBECONFIG` set and its config, cache and data kept in the temp dir.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.binaries.path("helm"));
        let home = self.dir.join("helm");
        cmd.env("KUBECONFIG", &self.kubeconfig_path)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// Process ids of the running components.
    pub fn pids(&self) -> Vec<(Component, u32)> {
        self.running().iter().map(|r| (r.component, r.child.id())).collect()
    }

    /// Starts a stopped control plane again, on its data, ports and certificates: a site
    /// that comes back after an outage. VolSync and the snapshot-controller come back with it
    /// when it is a site.
    pub async fn restart(&self) -> Result<()> {
        self.stop();
        self.boot(&self.boot.options, &self.boot.pki, &self.boot.ports).await?;
        if self.site.initialized() {
            self.start_site_controllers().await?;
        }
        tracing::info!(name = %self.name, "control plane restarted");
        Ok(())
    }

    /// Kills all processes now (also done on drop). Later API calls fail: useful to
    /// simulate a site outage.
    pub fn stop(&self) {
        let mut running = self.running();
        while let Some(mut r) = running.pop() {
            process::kill(&mut r.child);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        process::remove_temp_dir(&self.dir);
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("name", &self.name)
            .field("server_url", &self.server_url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The addresses of one control plane's cluster network, unique in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteNetwork {
    /// `--service-cluster-ip-range`.
    pub service_cidr: Ipv4Net,
    /// The pool the site simulator's load balancer takes Service addresses from.
    pub lb_pool: Ipv4Net,
}

impl SiteNetwork {
    /// The N-th control plane (modulo 16) gets 10.(96+N).0.0/16 for Services and
    /// 172.(16+N).0.0/16 for load balancers: /16, so that a site can hold tens of thousands
    /// of Services.
    fn next() -> Self {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let n = (COUNT.fetch_add(1, Ordering::Relaxed) % 16) as u8;
        Self {
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 96 + n, 0, 0), 16).unwrap_or_default(),
            lb_pool: Ipv4Net::new(Ipv4Addr::new(172, 16 + n, 0, 0), 16).unwrap_or_default(),
        }
    }
}

struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
}

impl Ports {
    fn pick() -> Result<Self> {
        Ok(Self {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            controller_manager: free_port()?,
        })
    }
}

/// A free port on 127.0.0.1, never the same twice in this process.
pub(crate) fn free_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .context("binding a free loopback port")?
            .port();
        let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

async fn etcd_healthy(port: u16) -> Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response.contains("\"health\":\"true\""))
}

fn kubeconfig(cluster: &str, server: &str, ca: &CertKey, user: &str, cred: &CertKey) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let context = format!("coldsite-e2e-{cluster}");
    [
        "apiVersion: v1".to_owned(),
        "kind: Config".to_owned(),
        "clusters:".to_owned(),
        format!("- name: \"{context}\""),
        "  cluster:".to_owned(),
        format!("    server: \"{server}\""),
        format!("    certificate-authority-data: {}", b64(&ca.cert_pem)),
        "users:".to_owned(),
        format!("- name: \"{user}\""),
        "  user:".to_owned(),
        format!("    client-certificate-data: {}", b64(&cred.cert_pem)),
        format!("    client-key-data: {}", b64(&cred.key_pem)),
        "contexts:".to_owned(),
        format!("- name: \"{context}\""),
        "  context:".to_owned(),
        format!("    cluster: \"{context}\""),
        format!("    user: \"{user}\""),
        format!("current-context: \"{context}\""),
        String::new(),
    ]
    .join("\n")
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let mut out = all[all.len().saturating_sub(lines)..].join("\n");
            out.push('\n');
            out
        }
        Err(e) => format!("(cannot read {}: {e})\n", path.display()),
    }
}
