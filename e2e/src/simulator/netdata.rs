//! What a guest's interfaces report once it has booted, derived from the cloud-init
//! network data in the VM's volumes (netplan-style `version: 2` with `ethernets`).
//!
//! A real guest applies its network data and the QEMU guest agent reports the result;
//! the simulator reads the same document. This parser is deliberately independent of
//! coldsite's own renderer so that a bug there shows up as wrong IPs here.

use std::net::IpAddr;

use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;

/// One NIC of `spec.domain.devices.interfaces[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpecInterface {
    pub name: String,
    pub mac: Option<String>,
}

/// One entry of `ethernets`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Ethernet {
    pub id: String,
    pub match_mac: Option<String>,
    pub match_name: Option<String>,
    pub has_match: bool,
    pub set_name: Option<String>,
    pub addresses: Vec<IpAddr>,
}

/// Reads the `ethernets` of a cloud-init network config version 2 document (also when
/// wrapped in a top-level `network:` key, as cloud-init accepts).
pub(crate) fn parse_ethernets(text: &str) -> Result<Vec<Ethernet>, String> {
    let mut doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| format!("network data is not YAML: {e}"))?;
    if let Some(inner) = doc.get("network") {
        doc = inner.clone();
    }
    let version = doc.get("version").and_then(Yaml::as_u64);
    if version != Some(2) {
        return Err(format!(
            "network data version {version:?} is not supported by the simulator (only 2)"
        ));
    }
    let Some(ethernets) = doc.get("ethernets").and_then(Yaml::as_mapping) else {
        return Ok(Vec::new());
    };
    let text_of = |v: Option<&Yaml>| v.and_then(Yaml::as_str).map(str::to_owned);
    Ok(ethernets
        .iter()
        .filter_map(|(id, entry)| {
            let id = id.as_str()?.to_owned();
            let matcher = entry.get("match");
            let addresses = entry
                .get("addresses")
                .and_then(Yaml::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(Yaml::as_str)
                .filter_map(|cidr| cidr.split('/').next()?.trim().parse::<IpAddr>().ok())
                .collect();
            Some(Ethernet {
                id,
                match_mac: text_of(matcher.and_then(|m| m.get("macaddress"))),
                match_name: text_of(matcher.and_then(|m| m.get("name"))),
                has_match: matcher.is_some(),
                set_name: text_of(entry.get("set-name")),
                addresses,
            })
        })
        .collect())
}

fn same_mac(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// The ethernet entry that configures `nic`: by MAC first, then by name (`set-name`, or
/// the entry's id when it has no `match`).
fn ethernet_for<'a>(nic: &SpecInterface, ethernets: &'a [Ethernet]) -> Option<&'a Ethernet> {
    nic.mac
        .as_deref()
        .and_then(|mac| {
            ethernets
                .iter()
                .find(|e| e.match_mac.as_deref().is_some_and(|m| same_mac(m, mac)))
        })
        .or_else(|| {
            ethernets
                .iter()
                .find(|e| e.set_name.as_deref() == Some(nic.name.as_str()) || (!e.has_match && e.id == nic.name))
        })
}

/// `status.interfaces` of a running VMI: `name` (the NIC's name in the spec), `mac`,
/// and with a guest agent `interfaceName`, `ipAddress` (the first of `ipAddresses`) and
/// `ipAddresses`. Without an agent KubeVirt knows only what the domain tells.
/// `mac_of` gives the MAC of a NIC whose spec has none (libvirt would generate one).
pub(crate) fn interface_status(
    nics: &[SpecInterface],
    ethernets: &[Ethernet],
    agent: bool,
    mac_of: impl Fn(&SpecInterface) -> String,
) -> Vec<Value> {
    nics.iter()
        .enumerate()
        .map(|(index, nic)| {
            let mac = nic.mac.clone().unwrap_or_else(|| mac_of(nic));
            if !agent {
                return json!({"name": nic.name, "mac": mac, "infoSource": "domain"});
            }
            let ethernet = ethernet_for(nic, ethernets);
            let guest_name = ethernet
                .and_then(|e| {
                    e.set_name
                        .clone()
                        .or_else(|| (!e.has_match).then(|| e.id.clone()))
                        .or_else(|| e.match_name.clone().filter(|n| !n.contains('*')))
                })
                .unwrap_or_else(|| format!("eth{index}"));
            let ips: Vec<String> = ethernet
                .map(|e| e.addresses.iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let mut status = json!({
                "name": nic.name,
                "interfaceName": guest_name,
                "mac": mac,
                "infoSource": "domain, guest-agent",
            });
            if let Some(first) = ips.first() {
                status["ipAddress"] = json!(first);
                status["ipAddresses"] = json!(ips);
            }
            status
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = r#"
version: 2
ethernets:
  corp:
    match:
      macaddress: "02:C0:00:01:00:10"
    set-name: corp
    addresses: [10.0.1.10/24, "fd00:c0:1::10/64"]
  backup:
    addresses: [192.168.5.7/24]
  unused:
    match: {macaddress: "02:00:00:00:00:99"}
    addresses: [172.16.0.1/16]
"#;

    fn nic(name: &str, mac: Option<&str>) -> SpecInterface {
        SpecInterface {
            name: name.into(),
            mac: mac.map(Into::into),
        }
    }

    #[test]
    fn matches_by_mac_and_by_name_and_strips_prefixes() {
        let ethernets = parse_ethernets(DATA).unwrap();
        let nics = [
            nic("lan", Some("02:c0:00:01:00:10")),
            nic("backup", None),
            nic("other", None),
        ];
        let status = interface_status(&nics, &ethernets, true, |n| format!("gen-{}", n.name));
        assert_eq!(status[0]["name"], "lan");
        assert_eq!(status[0]["interfaceName"], "corp");
        assert_eq!(status[0]["mac"], "02:c0:00:01:00:10");
        assert_eq!(status[0]["ipAddress"], "10.0.1.10");
        assert_eq!(status[0]["ipAddresses"], json!(["10.0.1.10", "fd00:c0:1::10"]));
        assert_eq!(status[1]["interfaceName"], "backup");
        assert_eq!(status[1]["mac"], "gen-backup");
        assert_eq!(status[1]["ipAddress"], "192.168.5.7");
        assert_eq!(status[2]["interfaceName"], "eth2");
        assert!(status[2].get("ipAddress").is_none());
    }

    #[test]
    fn without_agent_no_addresses() {
        let ethernets = parse_ethernets(DATA).unwrap();
        let status = interface_status(&[nic("backup", None)], &ethernets, false, |_| "m".into());
        assert_eq!(status[0], json!({"name": "backup", "mac": "m", "infoSource": "domain"}));
    }

    #[test]
    fn json_and_wrapped_documents() {
        let json_doc = r#"{"version": 2, "ethernets": {"eth0": {"addresses": ["10.9.9.9/8"]}}}"#;
        assert_eq!(parse_ethernets(json_doc).unwrap()[0].id, "eth0");
        let wrapped = "network:\n  version: 2\n  ethernets:\n    e: {dhcp4: true}\n";
        assert!(parse_ethernets(wrapped).unwrap()[0].addresses.is_empty());
        assert!(parse_ethernets("version: 1\nconfig: []\n").is_err());
    }
}
