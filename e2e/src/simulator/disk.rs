//! Simulated disk contents, so that a test can prove what data a disk holds.
//!
//! A volume's data is the list of writes it has seen, oldest first, and its size. Every
//! copy made by the simulated parts (a mover's transfer, a snapshot, a restore, a clone)
//! copies the list whole. A volume keeps its data in the annotation [`DATA_ANNOTATION`]
//! of its PersistentVolume (the volume is the PV, not the claim); a snapshot keeps the data
//! it was cut with in its `snapshotHandle`, which never changes, so pre-provisioned copies of
//! a snapshot carry the same data.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::api::{Api, Patch};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::util;

/// The PV annotation that holds a volume's simulated data.
pub const DATA_ANNOTATION: &str = "sim.coldsite.io/data";
const HANDLE_PREFIX: &str = "sim-snapshot.";

/// What a simulated disk holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskData {
    /// Ids of the writes the disk has seen, oldest first.
    pub writes: Vec<String>,
    /// Whether the data was cut while its guest's filesystems were frozen (or copied from
    /// data that was): an application-consistent image. A running guest's writes clear it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quiesced: bool,
}

impl DiskData {
    /// How many writes the disk holds.
    pub fn generation(&self) -> usize {
        self.writes.len()
    }

    pub fn contains(&self, write: &str) -> bool {
        self.writes.iter().any(|w| w == write)
    }

    /// The data of a PV; empty for a volume never written.
    pub fn of_pv(pv: &PersistentVolume) -> Result<Self> {
        match pv.metadata.annotations.as_ref().and_then(|a| a.get(DATA_ANNOTATION)) {
            Some(text) => serde_json::from_str(text).with_context(|| format!("parsing {DATA_ANNOTATION}")),
            None => Ok(Self::default()),
        }
    }

    /// A snapshot handle that carries this data; `id` makes it unique.
    pub fn snapshot_handle(&self, id: &str) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{HANDLE_PREFIX}{id}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
        )
    }

    /// The data a snapshot handle of this driver carries.
    pub fn from_snapshot_handle(handle: &str) -> Result<Self> {
        let rest = handle
            .strip_prefix(HANDLE_PREFIX)
            .ok_or_else(|| anyhow!("{handle:?} is not a handle of the simulated CSI driver"))?;
        let (_, payload) = rest
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("snapshot handle {handle:?} carries no data"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .context("decoding a snapshot handle")?;
        serde_json::from_slice(&bytes).context("parsing a snapshot handle")
    }
}

/// The PV bound to a claim, if it is bound.
pub async fn bound_pv(client: &Client, namespace: &str, claim: &str) -> Result<Option<PersistentVolume>> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let Some(pvc) = pvcs
        .get_opt(claim)
        .await
        .with_context(|| format!("reading PVC {namespace}/{claim}"))?
    else {
        return Ok(None);
    };
    let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let Some(volume) = pvc.spec.and_then(|s| s.volume_name).filter(|_| bound) else {
        return Ok(None);
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    pvs.get_opt(&volume)
        .await
        .with_context(|| format!("reading PV {volume}"))
}

/// What the volume bound to a claim holds; `None` while the claim is not bound.
pub async fn read(client: &Client, namespace: &str, claim: &str) -> Result<Option<DiskData>> {
    match bound_pv(client, namespace, claim).await? {
        Some(pv) => DiskData::of_pv(&pv).map(Some),
        None => Ok(None),
    }
}

/// Changes the data of the volume bound to a claim, guarded by the PV's resourceVersion
/// (retried on a conflict), and returns the new data.
pub async fn update(client: &Client, namespace: &str, claim: &str, change: impl Fn(&mut DiskData)) -> Result<DiskData> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for _ in 0..10 {
        let Some(pv) = bound_pv(client, namespace, claim).await? else {
            bail!("PVC {namespace}/{claim} is not bound to a volume");
        };
        let mut data = DiskData::of_pv(&pv)?;
        change(&mut data);
        let patch = json!({"metadata": {
            "resourceVersion": pv.metadata.resource_version,
            "annotations": {DATA_ANNOTATION: serde_json::to_string(&data)?},
        }});
        let name = pv.metadata.name.clone().unwrap_or_default();
        match pvs.patch(&name, &util::params(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(data),
            Err(e) if util::is_conflict(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("writing the data of PV {name}")),
        }
    }
    bail!("PV of {namespace}/{claim} kept changing under the write")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_handles_carry_the_data_they_were_cut_with() {
        let data = DiskData {
            writes: vec!["hq-1".into(), "hq-2".into()],
            quiesced: true,
        };
        let handle = data.snapshot_handle("abc-123");
        assert!(handle.starts_with("sim-snapshot.abc-123."), "{handle}");
        assert_eq!(DiskData::from_snapshot_handle(&handle).unwrap(), data);
        assert!(DiskData::from_snapshot_handle("rbd-snap-1").is_err());
    }
}
