//! The stand-in CRDs of `e2e/crds/` and their installation.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::{FIELD_MANAGER, resources};

/// The stand-in CRDs as `(file name, YAML)`: real group, version, kind, plural, short
/// names, scope and status subresource; free-form spec and status.
pub const CRD_FILES: [(&str, &str); 7] = [
    (
        "kubevirt.io_virtualmachines.yaml",
        include_str!("../../crds/kubevirt.io_virtualmachines.yaml"),
    ),
    (
        "kubevirt.io_virtualmachineinstances.yaml",
        include_str!("../../crds/kubevirt.io_virtualmachineinstances.yaml"),
    ),
    (
        "volsync.backube_replicationsources.yaml",
        include_str!("../../crds/volsync.backube_replicationsources.yaml"),
    ),
    (
        "volsync.backube_replicationdestinations.yaml",
        include_str!("../../crds/volsync.backube_replicationdestinations.yaml"),
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshots.yaml",
        include_str!("../../crds/snapshot.storage.k8s.io_volumesnapshots.yaml"),
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
        include_str!("../../crds/snapshot.storage.k8s.io_volumesnapshotclasses.yaml"),
    ),
    (
        "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
        include_str!("../../crds/snapshot.storage.k8s.io_volumesnapshotcontents.yaml"),
    ),
];

/// How long [`install_crds`] waits for the CRDs to become Established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The stand-in CRDs, parsed.
pub fn stand_in_crds() -> Result<Vec<CustomResourceDefinition>> {
    CRD_FILES
        .iter()
        .map(|(file, yaml)| serde_yaml_ng::from_str(yaml).with_context(|| format!("parsing e2e/crds/{file}")))
        .collect()
}

/// Applies the stand-in CRDs of KubeVirt, VolSync and external-snapshotter with
/// server-side apply and waits until the API server reports them Established.
/// Idempotent; safe to call concurrently from several tests.
pub async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in stand_in_crds()? {
        let name = crd.metadata.name.clone().context("a stand-in CRD has no name")?;
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    let started = Instant::now();
    for name in names {
        loop {
            let crd = crds.get(&name).await.with_context(|| format!("reading CRD {name}"))?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if started.elapsed() > ESTABLISH_TIMEOUT {
                bail!("CRD {name} not Established after {}s", ESTABLISH_TIMEOUT.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Established is not yet served: the first request for a new resource can get a 503
    // (which the client retries after a second) or a 404. Wait for every kind at once.
    let served = resources::ALL.map(|kind| {
        let api = kind.all(client.clone());
        async move {
            loop {
                match api.list(&ListParams::default().limit(1)).await {
                    Ok(_) => return Ok(()),
                    Err(e) if started.elapsed() > ESTABLISH_TIMEOUT => {
                        return Err(anyhow!(e).context(format!("{} not served", kind.plural)));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    futures::future::try_join_all(served).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_carry_the_real_names() {
        let crds = stand_in_crds().unwrap();
        assert_eq!(crds.len(), resources::ALL.len());
        for kind in resources::ALL {
            let crd = crds
                .iter()
                .find(|c| c.spec.names.kind == kind.kind)
                .unwrap_or_else(|| panic!("no stand-in CRD for {}", kind.kind));
            assert_eq!(crd.spec.group, kind.group);
            assert_eq!(crd.spec.names.plural, kind.plural);
            assert_eq!(
                crd.metadata.name.as_deref(),
                Some(format!("{}.{}", kind.plural, kind.group).as_str())
            );
            assert_eq!(crd.spec.scope, if kind.namespaced { "Namespaced" } else { "Cluster" });
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, kind.version);
        }
    }
}
