//! Certificates and keys generated at run time for one control plane.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// All the key material of one control plane.
pub struct Pki {
    pub ca: CertKey,
    /// Serving certificate of kube-apiserver (127.0.0.1, localhost, kubernetes.default...).
    pub apiserver: CertKey,
    /// Client certificate of the admin user (group `system:masters`).
    pub admin: CertKey,
    /// Client certificate of kube-controller-manager (`system:kube-controller-manager`).
    pub controller_manager: CertKey,
    /// The aggregation layer's front proxy: the CA aggregated API servers trust for the
    /// requests kube-apiserver proxies to them, and its client certificate.
    pub front_proxy_ca: CertKey,
    pub front_proxy_client: CertKey,
    /// Service-account token signing key (private) and its public key.
    pub service_account_key_pem: String,
    pub service_account_pub_pem: String,
}

/// Files the PKI was written to.
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub front_proxy_ca: PathBuf,
    pub front_proxy_client_cert: PathBuf,
    pub front_proxy_client_key: PathBuf,
}

pub const ADMIN_USER: &str = "coldsite-e2e-admin";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The name aggregated API servers accept on the front proxy's certificate.
pub const FRONT_PROXY_USER: &str = "front-proxy-client";

/// A new CA named `common_name`: its certificate and key, and the issuer of its leaves.
fn new_ca(common_name: &str) -> Result<(CertKey, Issuer<'static, KeyPair>)> {
    let ca_key = KeyPair::generate().context("generating CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, common_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).context("self-signing CA")?;
    let ca = CertKey {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
    };
    Ok((ca, Issuer::new(ca_params, ca_key)))
}

/// A CA of its own and a serving certificate it signed for `names`: (CA, leaf).
pub(crate) fn serving(ca_name: &str, names: &[&str]) -> Result<(CertKey, CertKey)> {
    let (ca, issuer) = new_ca(ca_name)?;
    let leaf = leaf(&issuer, names[0], None, names, ExtendedKeyUsagePurpose::ServerAuth)?;
    Ok((ca, leaf))
}

impl Pki {
    pub fn generate(cluster_name: &str) -> Result<Self> {
        let (ca, issuer) = new_ca(&format!("coldsite-e2e-ca-{cluster_name}"))?;

        let apiserver = leaf(
            &issuer,
            "kube-apiserver",
            None,
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .context("issuing kube-apiserver serving certificate")?;
        let admin = leaf(
            &issuer,
            ADMIN_USER,
            Some("system:masters"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .context("issuing admin client certificate")?;
        let controller_manager = leaf(
            &issuer,
            CONTROLLER_MANAGER_USER,
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .context("issuing kube-controller-manager client certificate")?;

        let (front_proxy_ca, front_proxy_issuer) = new_ca(&format!("coldsite-e2e-front-proxy-ca-{cluster_name}"))?;
        let front_proxy_client = leaf(
            &front_proxy_issuer,
            FRONT_PROXY_USER,
            None,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .context("issuing the front proxy's client certificate")?;
        let sa = KeyPair::generate().context("generating service-account signing key")?;
        Ok(Self {
            ca,
            apiserver,
            admin,
            controller_manager,
            front_proxy_ca,
            front_proxy_client,
            service_account_key_pem: sa.serialize_pem(),
            service_account_pub_pem: sa.public_key_pem(),
        })
    }

    /// Writes the files kube-apiserver and kube-controller-manager read into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PkiFiles> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = PkiFiles {
            ca_cert: dir.join("ca.crt"),
            apiserver_cert: dir.join("apiserver.crt"),
            apiserver_key: dir.join("apiserver.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
            front_proxy_ca: dir.join("front-proxy-ca.crt"),
            front_proxy_client_cert: dir.join("front-proxy-client.crt"),
            front_proxy_client_key: dir.join("front-proxy-client.key"),
        };
        write_file(&files.ca_cert, &self.ca.cert_pem, 0o644)?;
        write_file(&dir.join("ca.key"), &self.ca.key_pem, 0o600)?;
        write_file(&files.apiserver_cert, &self.apiserver.cert_pem, 0o644)?;
        write_file(&files.apiserver_key, &self.apiserver.key_pem, 0o600)?;
        write_file(&files.sa_key, &self.service_account_key_pem, 0o600)?;
        write_file(&files.sa_pub, &self.service_account_pub_pem, 0o644)?;
        write_file(&files.front_proxy_ca, &self.front_proxy_ca.cert_pem, 0o644)?;
        write_file(&files.front_proxy_client_cert, &self.front_proxy_client.cert_pem, 0o644)?;
        write_file(&files.front_proxy_client_key, &self.front_proxy_client.key_pem, 0o600)?;
        Ok(files)
    }
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organization: Option<&str>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertKey> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params.distinguished_name.push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

pub(crate) fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
