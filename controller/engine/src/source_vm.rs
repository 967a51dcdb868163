//! What coldsite needs to know of a KubeVirt VirtualMachine at the primary site: its disks,
//! its NICs with their networks, and the addresses its cloud-init network data gives them.

use serde_json::Value;

use crate::cloudinit;
use crate::reip::SourceNic;

/// A VM's NIC: the interface, its KubeVirt network and its source addresses.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceVmNic {
    pub name: String,
    /// `pod`, or a Multus network as `namespace/name`.
    pub network: String,
    pub nic: SourceNic,
}

/// A VirtualMachine as read from its manifest or from the primary site.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceVm {
    pub namespace: String,
    pub name: String,
    /// PVC claim names (DataVolumes are PVCs of the same name).
    pub disks: Vec<String>,
    pub nics: Vec<SourceVmNic>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceVmError {
    #[error("VirtualMachine {0}: {1}")]
    Invalid(String, String),
}

/// Reads a `kubevirt.io/v1` VirtualMachine. `default_namespace` applies when the manifest
/// names none.
pub fn from_manifest(vm: &Value, default_namespace: &str) -> Result<SourceVm, SourceVmError> {
    let name = vm["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let namespace = vm["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace)
        .to_owned();
    let id = format!("{namespace}/{name}");
    let bad = |m: String| SourceVmError::Invalid(id.clone(), m);
    let spec = &vm["spec"]["template"]["spec"];
    let empty = Vec::new();
    let volumes = spec["volumes"].as_array().unwrap_or(&empty);

    let mut disks = Vec::new();
    let mut network_data = None;
    for v in volumes {
        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            disks.push(claim.to_owned());
        } else if let Some(dv) = v["dataVolume"]["name"].as_str() {
            disks.push(dv.to_owned());
        }
        for source in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
            if let Some(data) = v[source]["networkData"].as_str() {
                network_data = Some(data);
            }
        }
    }
    let addressed = match network_data {
        Some(text) => {
            cloudinit::parse_network_config(text).map_err(|e| bad(format!("cloud-init network data: {e}")))?
        }
        None => Vec::new(),
    };

    let interfaces = spec["domain"]["devices"]["interfaces"].as_array().unwrap_or(&empty);
    let mut nics = Vec::new();
    for net in spec["networks"].as_array().unwrap_or(&empty) {
        let nic_name = net["name"].as_str().unwrap_or_default().to_owned();
        let network = if net.get("pod").is_some() {
            "pod".to_owned()
        } else if let Some(n) = net["multus"]["networkName"].as_str() {
            if n.contains('/') {
                n.to_owned()
            } else {
                format!("{namespace}/{n}")
            }
        } else {
            return Err(bad(format!("network {nic_name:?} is neither pod nor multus")));
        };
        let mac = interfaces
            .iter()
            .find(|i| i["name"].as_str() == Some(&nic_name))
            .and_then(|i| i["macAddress"].as_str())
            .map(str::to_lowercase);
        // Network data names interfaces by set-name, or matches them by MAC.
        let from_data = addressed
            .iter()
            .find(|s| s.name == nic_name || (mac.is_some() && s.mac.as_deref().map(str::to_lowercase) == mac));
        let nic = match from_data {
            Some(s) => SourceNic {
                name: nic_name.clone(),
                mac: mac.clone().or_else(|| s.mac.clone()),
                ..s.clone()
            },
            None => SourceNic {
                name: nic_name.clone(),
                mac,
                addresses: Vec::new(),
                gateway4: None,
                gateway6: None,
            },
        };
        nics.push(SourceVmNic {
            name: nic_name,
            network,
            nic,
        });
    }
    Ok(SourceVm {
        namespace,
        name,
        disks,
        nics,
    })
}
