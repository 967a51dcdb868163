//! cloud-init network-config version 2 (KubeVirt's `cloudInitNoCloud.networkData`): rendering recovery NIC plans and reading a source VM's config back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use crate::reip::{NicPlan, SourceNic};

/// Why a network config cannot be rendered or read. Per-NIC errors name the `ethernets` key.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("network config is not valid YAML: {0}")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("network config is not a YAML mapping with `version` and `ethernets`")]
    NotAMapping,
    #[error("network config has no `version`; only `version: 2` is supported")]
    MissingVersion,
    #[error("network config version {found} is not supported; only version 2 (netplan style, with `ethernets`) is")]
    UnsupportedVersion { found: String },
    #[error("ethernets: must be a mapping from interface id to its settings")]
    EthernetsNotAMapping,
    #[error("ethernets: key {key} is not a string")]
    KeyNotAString { key: String },
    #[error("ethernets.{nic}: {source}")]
    Ethernet {
        nic: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("ethernets.{nic}.{field}: {value:?} is not {expected}")]
    BadValue {
        nic: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("cannot render network config as YAML: {0}")]
    Render(#[source] serde_yaml_ng::Error),
    #[error("cannot render network config as JSON: {0}")]
    RenderJson(#[source] serde_json::Error),
}

// ---- rendering -------------------------------------------------------------------------

#[derive(Serialize)]
struct NetworkOut<'a> {
    version: u8,
    // Keyed and ordered by name so the same plans always give the same bytes.
    ethernets: BTreeMap<&'a str, EthernetOut<'a>>,
}

#[derive(Serialize)]
struct EthernetOut<'a> {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    match_: Option<MatchOut<'a>>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<&'a str>,
    #[serde(skip_serializing_if = "is_false")]
    dhcp4: bool,
    #[serde(skip_serializing_if = "is_false")]
    dhcp6: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<RouteOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<NameserversOut<'a>>,
}

#[derive(Serialize)]
struct MatchOut<'a> {
    macaddress: &'a str,
}

#[derive(Serialize)]
struct RouteOut {
    to: &'static str,
    via: String,
}

#[derive(Serialize)]
struct NameserversOut<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    search: &'a [String],
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> EthernetOut<'a> {
    fn from_plan(nic: &'a NicPlan) -> Self {
        let mut routes = Vec::new();
        // `to: default` instead of gateway4/gateway6, which netplan deprecates.
        if let Some(gw) = nic.gateway4 {
            routes.push(RouteOut {
                to: "default",
                via: gw.to_string(),
            });
        }
        if let Some(gw) = nic.gateway6 {
            routes.push(RouteOut {
                to: "default",
                via: gw.to_string(),
            });
        }
        let nameservers = (!nic.dns.is_empty() || !nic.search.is_empty()).then(|| NameserversOut {
            addresses: nic.dns.iter().map(ToString::to_string).collect(),
            search: &nic.search,
        });
        let mac = nic.mac.as_deref();
        Self {
            match_: mac.map(|m| MatchOut { macaddress: m }),
            // set-name only with a match: without one the key already is the interface name.
            set_name: mac.map(|_| nic.name.as_str()),
            dhcp4: nic.dhcp4,
            dhcp6: nic.dhcp6,
            addresses: nic.addresses.iter().map(ToString::to_string).collect(),
            routes,
            nameservers,
        }
    }
}

/// Renders NIC plans as a cloud-init network-config v2 document, ethernets ordered by name.
/// NIC names are interface names, unique within a VM; of two plans with the same name only
/// the first is rendered.
///
/// cloud-init reads this with PyYAML, a YAML 1.1 parser, while serde_yaml_ng quotes only what
/// YAML 1.2 would misread: a MAC such as `52:54:00:12:34:56` would reach the guest as a
/// base-60 integer and a NIC named `on` as `true`. When any string is at risk, the document
/// is rendered as JSON instead, which is YAML too and quotes every string.
pub fn render_network_config(nics: &[NicPlan]) -> Result<String, CloudInitError> {
    let mut ethernets = BTreeMap::new();
    for nic in nics {
        ethernets
            .entry(nic.name.as_str())
            .or_insert_with(|| EthernetOut::from_plan(nic));
    }
    let doc = NetworkOut { version: 2, ethernets };
    if doc.strings().any(yaml11_ambiguous) {
        let mut text = serde_json::to_string_pretty(&doc).map_err(CloudInitError::RenderJson)?;
        text.push('\n');
        return Ok(text);
    }
    serde_yaml_ng::to_string(&doc).map_err(CloudInitError::Render)
}

impl NetworkOut<'_> {
    /// Every string scalar the document will hold, keys included.
    fn strings(&self) -> impl Iterator<Item = &str> {
        self.ethernets.iter().flat_map(|(key, e)| {
            let mac = e.match_.as_ref().map(|m| m.macaddress);
            let dns = e.nameservers.iter().flat_map(|n| {
                n.addresses
                    .iter()
                    .map(String::as_str)
                    .chain(n.search.iter().map(String::as_str))
            });
            std::iter::once(*key)
                .chain(mac)
                .chain(e.set_name)
                .chain(e.addresses.iter().map(String::as_str))
                .chain(e.routes.iter().flat_map(|r| [r.to, r.via.as_str()]))
                .chain(dns)
        })
    }
}

/// Whether a YAML 1.1 parser could read this plain scalar as something other than a string:
/// booleans and nulls, numbers (base 60 included), timestamps. It errs towards yes for
/// digit-led strings without a colon; the colon forms (MACs, IPv6) are matched exactly, so
/// ordinary MACs and addresses keep the YAML output.
fn yaml11_ambiguous(s: &str) -> bool {
    const WORDS: [&str; 13] = [
        "", "~", "null", "y", "n", "yes", "no", "on", "off", "true", "false", "=", "<<",
    ];
    if WORDS.contains(&s.to_ascii_lowercase().as_str()) {
        return true;
    }
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.starts_with('.') {
        // .5, .inf, .nan
        return true;
    }
    let b = t.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' {
        // A timestamp such as 2024-01-31 or 2024-01-31t10:00:00z.
        return true;
    }
    if t.contains(':') {
        return base60(t);
    }
    b.iter().filter(|c| **c == b'.').count() <= 1 && b.iter().all(|c| c.is_ascii_hexdigit() || b"_.+-xXoO".contains(c))
}

/// YAML 1.1 base-60 numbers: `1:20:30` (int, no leading zero) and `0:20:30.5` (float).
fn base60(t: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit() || c == b'_');
    let sixty = |p: &str| match p.as_bytes() {
        [d] => d.is_ascii_digit(),
        [a, d] => (b'0'..=b'5').contains(a) && d.is_ascii_digit(),
        _ => false,
    };
    let mut parts = t.split(':');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let Some((last, middle)) = rest.split_last() else {
        return false;
    };
    if !digits(first) || !middle.iter().all(|p| sixty(p)) {
        return false;
    }
    if sixty(last) {
        return !first.starts_with('0');
    }
    last.split_once('.')
        .is_some_and(|(sec, frac)| sixty(sec) && frac.bytes().all(|c| c.is_ascii_digit() || c == b'_'))
}

// ---- parsing ---------------------------------------------------------------------------

/// The parts of an `ethernets` entry a source NIC needs; serde skips all other keys.
#[derive(Deserialize, Default)]
#[serde(default)]
struct EthernetIn {
    #[serde(rename = "match")]
    match_: Option<MatchIn>,
    #[serde(rename = "set-name")]
    set_name: Option<String>,
    addresses: Vec<AddressIn>,
    routes: Vec<RouteIn>,
    gateway4: Option<String>,
    gateway6: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MatchIn {
    macaddress: Option<String>,
}

/// Netplan also allows `- 10.0.1.10/24: {label: ...}`; only the address matters here.
#[derive(Deserialize)]
#[serde(untagged)]
enum AddressIn {
    Plain(String),
    WithOptions(BTreeMap<String, Value>),
}

#[derive(Deserialize)]
struct RouteIn {
    to: Option<String>,
    via: Option<String>,
}

fn is_default_route(to: &str) -> bool {
    matches!(to, "default" | "0.0.0.0/0" | "::/0")
}

/// Reads a source VM's network-config v2 into its NICs, in document order. A NIC is named
/// by `set-name`, else by its `ethernets` key. The default gateway comes from a default route
/// (`to: default`, `0.0.0.0/0` or `::/0`), else from the legacy `gateway4`/`gateway6`.
/// Only `ethernets` is read; other keys, and other keys inside an entry, are ignored.
/// A top-level `network:` wrapper, as some cloud-init sources write it, is accepted.
pub fn parse_network_config(text: &str) -> Result<Vec<SourceNic>, CloudInitError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(CloudInitError::Yaml)?;
    let Value::Mapping(mut root) = doc else {
        return Err(CloudInitError::NotAMapping);
    };
    if !root.contains_key("version")
        && let Some(Value::Mapping(inner)) = root.remove("network")
    {
        root = inner;
    }
    check_version(root.get("version"))?;
    let ethernets = match root.remove("ethernets") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(CloudInitError::EthernetsNotAMapping),
    };
    parse_ethernets(ethernets)
}

fn check_version(version: Option<&Value>) -> Result<(), CloudInitError> {
    let found = match version {
        None | Some(Value::Null) => return Err(CloudInitError::MissingVersion),
        Some(Value::Number(n)) if n.as_u64() == Some(2) => return Ok(()),
        Some(Value::String(s)) if s.trim() == "2" => return Ok(()),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => format!("{other:?}"),
    };
    Err(CloudInitError::UnsupportedVersion { found })
}

fn parse_ethernets(ethernets: Mapping) -> Result<Vec<SourceNic>, CloudInitError> {
    let mut nics = Vec::with_capacity(ethernets.len());
    for (key, value) in ethernets {
        let key = match key {
            Value::String(s) => s,
            other => {
                return Err(CloudInitError::KeyNotAString {
                    key: format!("{other:?}"),
                });
            }
        };
        let entry: EthernetIn = match value {
            // `eth0: {}` and `eth0:` both mean an entry with nothing set.
            Value::Null => EthernetIn::default(),
            v => serde_yaml_ng::from_value(v).map_err(|source| CloudInitError::Ethernet {
                nic: key.clone(),
                source,
            })?,
        };
        nics.push(source_nic(key, entry)?);
    }
    Ok(nics)
}

fn source_nic(key: String, entry: EthernetIn) -> Result<SourceNic, CloudInitError> {
    let bad = |field: &'static str, value: &str, expected: &'static str| CloudInitError::BadValue {
        nic: key.clone(),
        field,
        value: value.to_owned(),
        expected,
    };
    let mut addresses = Vec::with_capacity(entry.addresses.len());
    for a in &entry.addresses {
        let text = match a {
            AddressIn::Plain(s) => s.as_str(),
            AddressIn::WithOptions(m) => match m.keys().next() {
                Some(k) if m.len() == 1 => k.as_str(),
                _ => {
                    return Err(bad(
                        "addresses",
                        &format!("{m:?}"),
                        "an address or a one-key mapping from an address to its options",
                    ));
                }
            },
        };
        let net: IpNet = text
            .parse()
            .map_err(|_| bad("addresses", text, "an address with a prefix such as 10.0.1.10/24"))?;
        addresses.push(net);
    }

    let mut gateway4: Option<Ipv4Addr> = None;
    let mut gateway6: Option<Ipv6Addr> = None;
    for route in &entry.routes {
        let (Some(to), Some(via)) = (route.to.as_deref(), route.via.as_deref()) else {
            continue;
        };
        if !is_default_route(to.trim()) {
            continue;
        }
        match via
            .parse::<IpAddr>()
            .map_err(|_| bad("routes[].via", via, "an IP address"))?
        {
            IpAddr::V4(g) => {
                gateway4.get_or_insert(g);
            }
            IpAddr::V6(g) => {
                gateway6.get_or_insert(g);
            }
        }
    }
    if gateway4.is_none()
        && let Some(g) = entry.gateway4.as_deref()
    {
        gateway4 = Some(g.parse().map_err(|_| bad("gateway4", g, "an IPv4 address"))?);
    }
    if gateway6.is_none()
        && let Some(g) = entry.gateway6.as_deref()
    {
        gateway6 = Some(g.parse().map_err(|_| bad("gateway6", g, "an IPv6 address"))?);
    }

    Ok(SourceNic {
        name: entry.set_name.unwrap_or(key),
        mac: entry.match_.and_then(|m| m.macaddress),
        addresses,
        gateway4,
        gateway6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reip::AddressSource;

    const SAMPLE: &str = r#"
version: 2
ethernets:
  corp:
    match:
      macaddress: "02:c0:00:01:00:10"
    set-name: corp
    addresses:
      - 10.0.1.10/24
      - fd00:c0:1::10/64
    routes:
      - to: default
        via: 10.0.1.1
    nameservers:
      addresses: [10.0.1.10]
      search: [contoso.com]
"#;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn plan(name: &str, mac: Option<&str>) -> NicPlan {
        NicPlan {
            name: name.into(),
            mac: mac.map(Into::into),
            addresses: vec![net("10.50.1.10/24"), net("fd00:c0:50::10/64")],
            gateway4: Some("10.50.1.1".parse().unwrap()),
            gateway6: Some("fd00:c0:50::1".parse().unwrap()),
            dns: vec!["10.50.1.10".parse().unwrap()],
            search: vec!["contoso.com".into()],
            dhcp4: false,
            dhcp6: false,
            source: AddressSource::Subnet,
        }
    }

    #[test]
    fn parses_the_sample() {
        let nics = parse_network_config(SAMPLE).unwrap();
        assert_eq!(
            nics,
            vec![SourceNic {
                name: "corp".into(),
                mac: Some("02:c0:00:01:00:10".into()),
                addresses: vec![net("10.0.1.10/24"), net("fd00:c0:1::10/64")],
                gateway4: Some("10.0.1.1".parse().unwrap()),
                gateway6: None,
            }]
        );
    }

    #[test]
    fn renders_the_expected_document() {
        let dhcp = NicPlan::dhcp("backup");
        let text = render_network_config(&[plan("corp", Some("02:c0:00:01:00:10")), dhcp]).unwrap();
        let expected = "\
version: 2
ethernets:
  backup:
    dhcp4: true
  corp:
    match:
      macaddress: 02:c0:00:01:00:10
    set-name: corp
    addresses:
    - 10.50.1.10/24
    - fd00:c0:50::10/64
    routes:
    - to: default
      via: 10.50.1.1
    - to: default
      via: fd00:c0:50::1
    nameservers:
      addresses:
      - 10.50.1.10
      search:
      - contoso.com
";
        assert_eq!(text, expected);
    }

    #[test]
    fn yaml_1_1_ambiguity_is_detected() {
        for risky in [
            "52:54:00:12:34:56",
            "1:2:3:4:5:6:7:8",
            "0:30:00.5",
            "on",
            "Yes",
            "off",
            "null",
            "123",
            "0777",
            "1_000",
            "1e3",
            "0x1f",
            ".5",
            "2024-01-31",
        ] {
            assert!(yaml11_ambiguous(risky), "{risky}");
        }
        for safe in [
            "02:c0:00:01:00:10",
            "52:54:00:ab:cd:ef",
            "52:54:00:12:34:99",
            "fd00:c0:50::1",
            "2001:db8::1",
            "10.50.1.1",
            "10.50.1.10/24",
            "fd00:c0:50::10/64",
            "corp",
            "eth0",
            "default",
            "contoso.com",
        ] {
            assert!(!yaml11_ambiguous(safe), "{safe}");
        }
    }

    #[test]
    fn an_ambiguous_string_switches_to_json_and_still_round_trips() {
        let mut p = plan("on", Some("52:54:00:12:34:56"));
        p.gateway6 = Some("2001:10:20:30:40:50:1:2".parse().unwrap());
        let text = render_network_config(std::slice::from_ref(&p)).unwrap();
        assert!(text.starts_with('{'), "{text}");
        assert!(text.contains(r#""macaddress": "52:54:00:12:34:56""#), "{text}");
        let nics = parse_network_config(&text).unwrap();
        assert_eq!(nics[0].name, "on");
        assert_eq!(nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(nics[0].gateway6, p.gateway6);
    }

    #[test]
    fn rendering_is_deterministic_and_order_independent() {
        let a = plan("a", None);
        let b = plan("b", Some("02:00:00:00:00:01"));
        let one = render_network_config(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(one, render_network_config(&[a.clone(), b.clone()]).unwrap());
        assert_eq!(one, render_network_config(&[b, a]).unwrap());
    }

    #[test]
    fn round_trips_names_macs_addresses_and_gateways() {
        let plans = vec![plan("corp", Some("02:c0:00:01:00:10")), plan("mgmt", None)];
        let text = render_network_config(&plans).unwrap();
        let nics = parse_network_config(&text).unwrap();
        assert_eq!(nics.len(), 2);
        for (p, n) in plans.iter().zip(&nics) {
            assert_eq!(p.name, n.name);
            assert_eq!(p.mac, n.mac);
            assert_eq!(p.addresses, n.addresses);
            assert_eq!(p.gateway4, n.gateway4);
            assert_eq!(p.gateway6, n.gateway6);
        }
    }

    #[test]
    fn set_name_wins_over_the_key_and_legacy_gateways_are_read() {
        let text = r#"
version: 2
renderer: networkd
ethernets:
  id0:
    match: {macaddress: "02:00:00:00:00:0a", driver: virtio_net}
    set-name: eth0
    addresses:
      - 192.168.1.5/24
      - "2001:db8::5/64": {label: "eth0:1"}
    gateway4: 192.168.1.1
    gateway6: 2001:db8::1
    mtu: 1500
  eth1:
    dhcp4: true
bonds: {}
"#;
        let nics = parse_network_config(text).unwrap();
        assert_eq!(nics[0].name, "eth0");
        assert_eq!(nics[0].mac.as_deref(), Some("02:00:00:00:00:0a"));
        assert_eq!(nics[0].addresses, vec![net("192.168.1.5/24"), net("2001:db8::5/64")]);
        assert_eq!(nics[0].gateway4, Some("192.168.1.1".parse().unwrap()));
        assert_eq!(nics[0].gateway6, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(nics[1].name, "eth1");
        assert!(nics[1].addresses.is_empty());
    }

    #[test]
    fn default_routes_in_every_spelling_win_over_legacy() {
        let text = r#"
network:
  version: 2
  ethernets:
    eth0:
      gateway4: 10.0.0.254
      routes:
        - {to: 192.168.0.0/16, via: 10.0.0.2}
        - {to: 0.0.0.0/0, via: 10.0.0.1}
        - {to: "::/0", via: "fd00::1"}
"#;
        let nics = parse_network_config(text).unwrap();
        assert_eq!(nics[0].gateway4, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(nics[0].gateway6, Some("fd00::1".parse().unwrap()));
    }

    #[test]
    fn version_1_is_refused_by_name() {
        let err = parse_network_config("version: 1\nconfig:\n  - type: physical\n    name: eth0\n").unwrap_err();
        assert!(matches!(&err, CloudInitError::UnsupportedVersion { found } if found == "1"));
        assert!(err.to_string().contains("version 1"), "{err}");
        assert!(matches!(
            parse_network_config("ethernets: {}").unwrap_err(),
            CloudInitError::MissingVersion
        ));
    }

    #[test]
    fn bad_values_name_the_nic_and_field() {
        let err = parse_network_config("version: 2\nethernets:\n  corp:\n    addresses: [10.0.1.10]\n").unwrap_err();
        assert!(
            matches!(&err, CloudInitError::BadValue { nic, field: "addresses", value, .. } if nic == "corp" && value == "10.0.1.10"),
            "{err}"
        );
        let err = parse_network_config("version: 2\nethernets:\n  corp:\n    routes: [{to: default, via: gw}]\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("ethernets.corp.routes[].via"), "{err}");
        let err = parse_network_config("version: 2\nethernets:\n  corp:\n    addresses: 5\n").unwrap_err();
        assert!(
            matches!(&err, CloudInitError::Ethernet { nic, .. } if nic == "corp"),
            "{err}"
        );
    }
}
