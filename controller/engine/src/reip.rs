//! Re-IP: translating source-site addresses into target subnets (host bits kept) and planning each NIC's addressing at the recovery site.

use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coldsite_api::network_mapping::SubnetRule;
use coldsite_api::protected_vm::NicOverride;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a subnet rule or a static override cannot be used. `field` names the offending field
/// as the API spells it (`source`, `dns[1]`, `spec.recovery.nics[corp].ip`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReipError {
    #[error("{field}: {value:?} is not a CIDR such as 10.0.1.0/24")]
    NotCidr { field: String, value: String },
    #[error("{field}: {value:?} is not an IP address such as 10.50.1.1")]
    NotIp { field: String, value: String },
    #[error("{field}: {value} has host bits set; the subnet is {network}")]
    HostBitsSet {
        field: String,
        value: IpNet,
        network: IpNet,
    },
    #[error("target: {target} is not the same IP family as source {source_net}; a subnet maps only within one family")]
    FamilyMismatch { source_net: IpNet, target: IpNet },
    #[error(
        "target: {target} has prefix length /{target_len} but source {source_net} has /{source_len}; they must match so host bits carry over"
    )]
    PrefixMismatch {
        source_net: IpNet,
        target: IpNet,
        source_len: u8,
        target_len: u8,
    },
    #[error("gateway: {gateway} lies outside target {target}")]
    GatewayOutsideTarget { gateway: IpAddr, target: IpNet },
}

/// A validated subnet translation: an address in `source` maps to the address with the same
/// host bits in `target`. `gateway`, `dns` and `search` are what recovered NICs on `target` use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetMap {
    pub source: IpNet,
    pub target: IpNet,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl SubnetMap {
    /// Parses and checks one `spec.networks[].subnets[]` entry.
    pub fn from_rule(rule: &SubnetRule) -> Result<Self, ReipError> {
        let source = parse_network("source", &rule.source)?;
        let target = parse_network("target", &rule.target)?;
        if family(source.addr()) != family(target.addr()) {
            return Err(ReipError::FamilyMismatch {
                source_net: source,
                target,
            });
        }
        if source.prefix_len() != target.prefix_len() {
            return Err(ReipError::PrefixMismatch {
                source_net: source,
                target,
                source_len: source.prefix_len(),
                target_len: target.prefix_len(),
            });
        }
        let gateway = rule
            .gateway
            .as_deref()
            .map(|g| parse_ip("gateway".to_owned(), g))
            .transpose()?;
        if let Some(gw) = gateway
            && !target.contains(&gw)
        {
            return Err(ReipError::GatewayOutsideTarget { gateway: gw, target });
        }
        let dns = rule
            .dns
            .iter()
            .enumerate()
            .map(|(i, d)| parse_ip(format!("dns[{i}]"), d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            source,
            target,
            gateway,
            dns,
            search: rule.dns_search.clone(),
        })
    }

    /// Whether `translate` can use this rule: one family and one prefix length on both sides.
    /// `from_rule` guarantees it; a hand-built map may not.
    fn is_consistent(&self) -> bool {
        family(self.source.addr()) == family(self.target.addr()) && self.source.prefix_len() == self.target.prefix_len()
    }
}

fn parse_network(field: &str, value: &str) -> Result<IpNet, ReipError> {
    let net: IpNet = value.parse().map_err(|_| ReipError::NotCidr {
        field: field.to_owned(),
        value: value.to_owned(),
    })?;
    if net.trunc() != net {
        return Err(ReipError::HostBitsSet {
            field: field.to_owned(),
            value: net,
            network: net.trunc(),
        });
    }
    Ok(net)
}

fn parse_ip(field: String, value: &str) -> Result<IpAddr, ReipError> {
    value.parse().map_err(|_| ReipError::NotIp {
        field,
        value: value.to_owned(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn family(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// The most specific rule whose source contains `ip`. Equal prefixes containing the same
/// address mean a repeated source, which validation rejects; the first one wins then.
fn rule_for_source(ip: IpAddr, rules: &[SubnetMap]) -> Option<&SubnetMap> {
    rules
        .iter()
        .filter(|r| r.source.contains(&ip))
        .min_by_key(|r| Reverse(r.source.prefix_len()))
}

/// Same as [`rule_for_source`], on the target side: a static recovery address finds its
/// DNS settings through the subnet it lands in.
fn rule_for_target(ip: IpAddr, rules: &[SubnetMap]) -> Option<&SubnetMap> {
    rules
        .iter()
        .filter(|r| r.target.contains(&ip))
        .min_by_key(|r| Reverse(r.target.prefix_len()))
}

/// Target network bits joined with the host bits of `ip`. `None` when the rule mixes
/// families or prefix lengths: no sensible host part exists then.
fn map_host(ip: IpAddr, rule: &SubnetMap) -> Option<IpNet> {
    if !rule.is_consistent() {
        return None;
    }
    match (ip, rule.target) {
        (IpAddr::V4(ip), IpNet::V4(t)) => {
            let host = u32::from(ip) & u32::from(t.hostmask());
            let net = u32::from(t.network()) & u32::from(t.netmask());
            Ipv4Net::new(Ipv4Addr::from(net | host), t.prefix_len())
                .ok()
                .map(IpNet::V4)
        }
        (IpAddr::V6(ip), IpNet::V6(t)) => {
            let host = u128::from(ip) & u128::from(t.hostmask());
            let net = u128::from(t.network()) & u128::from(t.netmask());
            Ipv6Net::new(Ipv6Addr::from(net | host), t.prefix_len())
                .ok()
                .map(IpNet::V6)
        }
        _ => None,
    }
}

fn translate_with_rule(addr: IpNet, rules: &[SubnetMap]) -> Option<(IpNet, &SubnetMap)> {
    // The most specific rule decides alone: if it is unusable, falling back to a broader
    // rule would map the address somewhere its operator did not intend.
    let rule = rule_for_source(addr.addr(), rules)?;
    map_host(addr.addr(), rule).map(|t| (t, rule))
}

/// Maps a host address with its prefix (`10.0.1.25/24`) through the most specific rule whose
/// source contains it, keeping the host bits: `10.50.1.25/24` for `10.0.1.0/24 → 10.50.1.0/24`.
/// The result carries the rule's prefix length. `None` when no rule's source contains it.
pub fn translate(addr: IpNet, rules: &[SubnetMap]) -> Option<IpNet> {
    translate_with_rule(addr, rules).map(|(t, _)| t)
}

/// The rules for the reverse direction (failback): source and target swapped.
///
/// A rule only knows the target site's gateway and DNS, so the reversed rules have none
/// (`gateway: None`, empty `dns` and `search`). Callers that have a mapping written for the
/// other direction should use it instead. Without one, [`plan_nic`] still carries a NIC's
/// gateway across by translating it like an address, but DNS stays unset.
pub fn invert(rules: &[SubnetMap]) -> Vec<SubnetMap> {
    rules
        .iter()
        .map(|r| SubnetMap {
            source: r.target,
            target: r.source,
            gateway: None,
            dns: Vec::new(),
            search: Vec::new(),
        })
        .collect()
}

/// Rules that map each address's own subnet onto itself, for planning a NIC back onto the
/// addresses it had (failback when the inverse mapping cannot cover it). Like [`invert`],
/// no gateway or DNS: [`plan_nic`] carries the NIC's own gateway over unchanged.
pub fn identity_rules(addresses: &[IpNet]) -> Vec<SubnetMap> {
    let mut rules: Vec<SubnetMap> = Vec::with_capacity(addresses.len());
    for a in addresses {
        let net = a.trunc();
        if rules.iter().all(|r| r.source != net) {
            rules.push(SubnetMap {
                source: net,
                target: net,
                gateway: None,
                dns: Vec::new(),
                search: Vec::new(),
            });
        }
    }
    rules
}

/// Where a planned NIC's addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// A static override from `spec.recovery.nics[]`.
    Static,
    /// Translated through the mapping's subnet rules.
    Subnet,
    /// Nothing could be translated: the guest asks DHCP.
    Dhcp,
}

/// A NIC of the source VM as its network config describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceNic {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
}

/// A static recovery address for one NIC (`spec.recovery.nics[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticAddress {
    pub ip: IpNet,
    pub gateway: Option<IpAddr>,
}

impl StaticAddress {
    /// The failover address of an override (`ip`, `gateway`); `None` when `ip` is unset.
    pub fn from_override(nic: &NicOverride) -> Result<Option<Self>, ReipError> {
        Self::parse(&nic.name, "ip", nic.ip.as_deref(), "gateway", nic.gateway.as_deref())
    }

    /// The test-failover address of an override (`testIp`, `testGateway`); `None` when
    /// `testIp` is unset.
    pub fn from_test_override(nic: &NicOverride) -> Result<Option<Self>, ReipError> {
        Self::parse(
            &nic.name,
            "testIp",
            nic.test_ip.as_deref(),
            "testGateway",
            nic.test_gateway.as_deref(),
        )
    }

    fn parse(
        name: &str,
        ip_field: &str,
        ip: Option<&str>,
        gw_field: &str,
        gateway: Option<&str>,
    ) -> Result<Option<Self>, ReipError> {
        let Some(ip) = ip else { return Ok(None) };
        let field = |f: &str| format!("spec.recovery.nics[{name}].{f}");
        let ip: IpNet = ip.parse().map_err(|_| ReipError::NotCidr {
            field: field(ip_field),
            value: ip.to_owned(),
        })?;
        let gateway = gateway.map(|g| parse_ip(field(gw_field), g)).transpose()?;
        Ok(Some(Self { ip, gateway }))
    }
}

/// How one NIC is addressed at the recovery site; `cloudinit` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub dns: Vec<IpAddr>,
    pub search: Vec<String>,
    pub dhcp4: bool,
    pub dhcp6: bool,
    pub source: AddressSource,
}

impl NicPlan {
    /// A NIC whose guest asks DHCP for its IPv4 address.
    pub fn dhcp(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            mac: None,
            addresses: Vec::new(),
            gateway4: None,
            gateway6: None,
            dns: Vec::new(),
            search: Vec::new(),
            dhcp4: true,
            dhcp6: false,
            source: AddressSource::Dhcp,
        }
    }

    fn empty(nic: &SourceNic) -> Self {
        Self {
            mac: nic.mac.clone(),
            dhcp4: false,
            ..Self::dhcp(&nic.name)
        }
    }

    fn push_address(&mut self, addr: IpNet) {
        if !self.addresses.contains(&addr) {
            self.addresses.push(addr);
        }
    }

    /// Sets the gateway of its family unless one is already set: the first rule wins.
    fn offer_gateway(&mut self, gw: IpAddr) {
        match gw {
            IpAddr::V4(g) => {
                self.gateway4.get_or_insert(g);
            }
            IpAddr::V6(g) => {
                self.gateway6.get_or_insert(g);
            }
        }
    }

    fn absorb_dns(&mut self, rule: &SubnetMap) {
        for d in &rule.dns {
            if !self.dns.contains(d) {
                self.dns.push(*d);
            }
        }
        for s in &rule.search {
            if !self.search.contains(s) {
                self.search.push(s.clone());
            }
        }
    }

    fn has_family(&self, f: Family) -> bool {
        self.addresses.iter().any(|a| family(a.addr()) == f)
    }
}

/// Decides one NIC's addressing at the recovery site.
///
/// - A static override wins for its own IP family: its address replaces the NIC's source
///   addresses of that family. The gateway is the override's, else the gateway of the rule
///   whose *target* holds the address; DNS and search come from that rule. Addresses of the
///   other family still go through the subnet rules, so a dual-stack NIC keeps both.
/// - Otherwise each source address is translated by the most specific rule; gateway, DNS and
///   search come from the rules used, per family, first rule first. A rule without a
///   gateway gets the NIC's source gateway translated like an address (same host bits), so
///   inverted rules still give a failback VM its old gateway.
/// - A source address no rule covers is dropped, never carried over untranslated. A family
///   that had source addresses but ends with none turns DHCP on (`dhcp4`/`dhcp6`); a NIC
///   with no address at all gets `dhcp4`. DHCP for one family does not remove the
///   translated addresses of the other: this is the mixed case.
pub fn plan_nic(nic: &SourceNic, rules: &[SubnetMap], static_override: Option<StaticAddress>) -> NicPlan {
    let mut plan = NicPlan::empty(nic);
    let static_family = static_override.map(|s| family(s.ip.addr()));

    if let Some(s) = static_override {
        plan.push_address(s.ip);
        let rule = rule_for_target(s.ip.addr(), rules);
        if let Some(gw) = s.gateway.or_else(|| rule.and_then(|r| r.gateway)) {
            plan.offer_gateway(gw);
        }
        if let Some(r) = rule {
            plan.absorb_dns(r);
        }
    }

    for addr in &nic.addresses {
        if Some(family(addr.addr())) == static_family {
            continue;
        }
        let Some((translated, rule)) = translate_with_rule(*addr, rules) else {
            continue;
        };
        plan.push_address(translated);
        let gateway = rule.gateway.or_else(|| {
            let source_gw = match addr.addr() {
                IpAddr::V4(_) => nic.gateway4.map(IpAddr::V4),
                IpAddr::V6(_) => nic.gateway6.map(IpAddr::V6),
            }?;
            // Only through this same rule: a gateway in another subnet is not this one's.
            rule.source
                .contains(&source_gw)
                .then(|| map_host(source_gw, rule))
                .flatten()
                .map(|n| n.addr())
        });
        if let Some(gw) = gateway {
            plan.offer_gateway(gw);
        }
        plan.absorb_dns(rule);
    }

    let had = |f: Family| nic.addresses.iter().any(|a| family(a.addr()) == f);
    plan.dhcp4 = !plan.has_family(Family::V4) && (had(Family::V4) || nic.addresses.is_empty());
    plan.dhcp6 = !plan.has_family(Family::V6) && had(Family::V6);
    if static_override.is_some() && nic.addresses.is_empty() {
        // The override is the whole configuration; nothing else to ask DHCP for.
        plan.dhcp4 = false;
    }
    plan.source = if static_override.is_some() {
        AddressSource::Static
    } else if plan.addresses.is_empty() {
        AddressSource::Dhcp
    } else {
        AddressSource::Subnet
    };
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(source: &str, target: &str, gateway: Option<&str>, dns: &[&str]) -> SubnetRule {
        SubnetRule {
            source: source.into(),
            target: target.into(),
            gateway: gateway.map(Into::into),
            dns: dns.iter().map(|d| (*d).into()).collect(),
            dns_search: Vec::new(),
        }
    }

    /// The Exchange example: corp v4 and v6 subnets moving to the recovery site.
    fn exchange() -> Vec<SubnetMap> {
        let mut v4 = rule("10.0.1.0/24", "10.50.1.0/24", Some("10.50.1.1"), &["10.50.1.10"]);
        v4.dns_search = vec!["contoso.com".into()];
        vec![
            SubnetMap::from_rule(&v4).unwrap(),
            SubnetMap::from_rule(&rule("fd00:c0:1::/64", "fd00:c0:50::/64", None, &[])).unwrap(),
        ]
    }

    fn corp_nic(addresses: &[&str]) -> SourceNic {
        SourceNic {
            name: "corp".into(),
            mac: Some("02:c0:00:01:00:10".into()),
            addresses: addresses.iter().map(|a| net(a)).collect(),
            gateway4: Some("10.0.1.1".parse().unwrap()),
            gateway6: Some("fd00:c0:1::1".parse().unwrap()),
        }
    }

    #[test]
    fn from_rule_parses_the_exchange_rule() {
        let rules = exchange();
        assert_eq!(rules[0].source, net("10.0.1.0/24"));
        assert_eq!(rules[0].target, net("10.50.1.0/24"));
        assert_eq!(rules[0].gateway, Some(ip("10.50.1.1")));
        assert_eq!(rules[0].dns, vec![ip("10.50.1.10")]);
        assert_eq!(rules[0].search, vec!["contoso.com".to_owned()]);
        assert_eq!(rules[1].gateway, None);
    }

    #[test]
    fn from_rule_rejects_bad_rules_naming_the_field() {
        let err = |r: SubnetRule| SubnetMap::from_rule(&r).unwrap_err();
        assert_eq!(
            err(rule("10.0.1.0", "10.50.1.0/24", None, &[])),
            ReipError::NotCidr {
                field: "source".into(),
                value: "10.0.1.0".into()
            }
        );
        assert_eq!(
            err(rule("10.0.1.0/24", "10.50.1.7/24", None, &[])),
            ReipError::HostBitsSet {
                field: "target".into(),
                value: net("10.50.1.7/24"),
                network: net("10.50.1.0/24")
            }
        );
        assert!(matches!(
            err(rule("10.0.1.0/24", "10.50.0.0/16", None, &[])),
            ReipError::PrefixMismatch {
                source_len: 24,
                target_len: 16,
                ..
            }
        ));
        assert!(matches!(
            err(rule("10.0.1.0/24", "fd00::/24", None, &[])),
            ReipError::FamilyMismatch { .. }
        ));
        assert_eq!(
            err(rule("10.0.1.0/24", "10.50.1.0/24", Some("10.50.2.1"), &[])),
            ReipError::GatewayOutsideTarget {
                gateway: ip("10.50.2.1"),
                target: net("10.50.1.0/24")
            }
        );
        assert_eq!(
            err(rule("10.0.1.0/24", "10.50.1.0/24", None, &["10.50.1.10", "dns1"])),
            ReipError::NotIp {
                field: "dns[1]".into(),
                value: "dns1".into()
            }
        );
        let msg = err(rule("10.0.1.0/24", "10.50.0.0/16", None, &[])).to_string();
        assert!(msg.contains("10.50.0.0/16") && msg.contains("/24"), "{msg}");
    }

    #[test]
    fn translate_keeps_host_bits_v4_and_v6() {
        let rules = exchange();
        assert_eq!(translate(net("10.0.1.25/24"), &rules), Some(net("10.50.1.25/24")));
        assert_eq!(
            translate(net("fd00:c0:1::10/64"), &rules),
            Some(net("fd00:c0:50::10/64"))
        );
        assert_eq!(translate(net("10.0.2.25/24"), &rules), None);
    }

    #[test]
    fn translate_uses_the_rule_prefix_and_longest_match() {
        let rules = vec![
            SubnetMap::from_rule(&rule("10.0.0.0/16", "10.60.0.0/16", None, &[])).unwrap(),
            SubnetMap::from_rule(&rule("10.0.1.0/24", "10.50.1.0/24", None, &[])).unwrap(),
        ];
        assert_eq!(translate(net("10.0.1.25/16"), &rules), Some(net("10.50.1.25/24")));
        assert_eq!(translate(net("10.0.2.25/16"), &rules), Some(net("10.60.2.25/16")));
    }

    #[test]
    fn translate_refuses_an_inconsistent_hand_built_rule() {
        let rules = vec![SubnetMap {
            source: net("10.0.1.0/24"),
            target: net("fd00::/24"),
            gateway: None,
            dns: Vec::new(),
            search: Vec::new(),
        }];
        assert_eq!(translate(net("10.0.1.25/24"), &rules), None);
    }

    #[test]
    fn invert_swaps_and_forgets_gateway_and_dns() {
        let back = invert(&exchange());
        assert_eq!(back[0].source, net("10.50.1.0/24"));
        assert_eq!(back[0].target, net("10.0.1.0/24"));
        assert_eq!(back[0].gateway, None);
        assert!(back[0].dns.is_empty() && back[0].search.is_empty());
        assert_eq!(translate(net("10.50.1.25/24"), &back), Some(net("10.0.1.25/24")));
    }

    #[test]
    fn plan_translates_a_dual_stack_nic() {
        let plan = plan_nic(&corp_nic(&["10.0.1.25/24", "fd00:c0:1::25/64"]), &exchange(), None);
        assert_eq!(plan.source, AddressSource::Subnet);
        assert_eq!(plan.mac.as_deref(), Some("02:c0:00:01:00:10"));
        assert_eq!(plan.addresses, vec![net("10.50.1.25/24"), net("fd00:c0:50::25/64")]);
        assert_eq!(plan.gateway4, Some("10.50.1.1".parse().unwrap()));
        // The v6 rule has no gateway: the source one is carried over with its host bits.
        assert_eq!(plan.gateway6, Some("fd00:c0:50::1".parse().unwrap()));
        assert_eq!(plan.dns, vec![ip("10.50.1.10")]);
        assert_eq!(plan.search, vec!["contoso.com".to_owned()]);
        assert!(!plan.dhcp4 && !plan.dhcp6);
    }

    #[test]
    fn a_static_override_wins_for_its_family() {
        let plan = plan_nic(
            &corp_nic(&["10.0.1.25/24", "fd00:c0:1::25/64"]),
            &exchange(),
            Some(StaticAddress {
                ip: net("10.50.1.10/24"),
                gateway: None,
            }),
        );
        assert_eq!(plan.source, AddressSource::Static);
        assert_eq!(plan.addresses, vec![net("10.50.1.10/24"), net("fd00:c0:50::25/64")]);
        // No gateway in the override: the rule whose target holds the address gives one.
        assert_eq!(plan.gateway4, Some("10.50.1.1".parse().unwrap()));
        assert_eq!(plan.dns, vec![ip("10.50.1.10")]);
        assert!(!plan.dhcp4 && !plan.dhcp6);
    }

    #[test]
    fn a_static_override_gateway_beats_the_rule() {
        let plan = plan_nic(
            &corp_nic(&["10.0.1.25/24"]),
            &exchange(),
            Some(StaticAddress {
                ip: net("10.50.1.10/24"),
                gateway: Some(ip("10.50.1.254")),
            }),
        );
        assert_eq!(plan.addresses, vec![net("10.50.1.10/24")]);
        assert_eq!(plan.gateway4, Some("10.50.1.254".parse().unwrap()));
    }

    #[test]
    fn a_static_override_outside_every_rule_has_no_dns() {
        let plan = plan_nic(
            &corp_nic(&[]),
            &exchange(),
            Some(StaticAddress {
                ip: net("192.168.7.5/24"),
                gateway: Some(ip("192.168.7.1")),
            }),
        );
        assert_eq!(plan.addresses, vec![net("192.168.7.5/24")]);
        assert!(plan.dns.is_empty());
        assert!(!plan.dhcp4 && !plan.dhcp6);
    }

    #[test]
    fn an_unmapped_address_falls_back_to_dhcp() {
        let plan = plan_nic(&corp_nic(&["172.16.0.5/24"]), &exchange(), None);
        assert_eq!(plan.source, AddressSource::Dhcp);
        assert!(plan.addresses.is_empty());
        assert!(plan.dhcp4 && !plan.dhcp6);
        assert_eq!(plan.gateway4, None);
        assert!(plan.dns.is_empty());
    }

    #[test]
    fn a_nic_without_addresses_gets_dhcp4() {
        let plan = plan_nic(&corp_nic(&[]), &exchange(), None);
        assert_eq!(plan.source, AddressSource::Dhcp);
        assert!(plan.dhcp4 && !plan.dhcp6);
    }

    #[test]
    fn mixed_keeps_what_translates_and_dhcps_the_rest() {
        let plan = plan_nic(
            &corp_nic(&["10.0.1.25/24", "10.9.9.9/24", "2001:db8::5/64"]),
            &exchange(),
            None,
        );
        assert_eq!(plan.source, AddressSource::Subnet);
        assert_eq!(plan.addresses, vec![net("10.50.1.25/24")]);
        assert!(!plan.dhcp4 && plan.dhcp6);
        assert_eq!(plan.gateway6, None);
    }

    #[test]
    fn identity_rules_plan_a_nic_onto_itself() {
        let nic = corp_nic(&["10.0.1.25/24", "10.0.1.26/24", "fd00:c0:1::25/64"]);
        let rules = identity_rules(&nic.addresses);
        assert_eq!(rules.len(), 2);
        let plan = plan_nic(&nic, &rules, None);
        assert_eq!(plan.addresses, nic.addresses);
        assert_eq!(plan.gateway4, nic.gateway4);
        assert_eq!(plan.gateway6, nic.gateway6);
    }

    #[test]
    fn static_address_from_override_names_the_field() {
        let mut o = NicOverride {
            name: "corp".into(),
            ip: Some("10.50.1.10/24".into()),
            gateway: Some("10.50.1.1".into()),
            test_ip: None,
            test_gateway: None,
        };
        assert_eq!(
            StaticAddress::from_override(&o).unwrap(),
            Some(StaticAddress {
                ip: net("10.50.1.10/24"),
                gateway: Some(ip("10.50.1.1"))
            })
        );
        assert_eq!(StaticAddress::from_test_override(&o).unwrap(), None);
        o.test_ip = Some("192.168.100.25".into());
        assert_eq!(
            StaticAddress::from_test_override(&o).unwrap_err(),
            ReipError::NotCidr {
                field: "spec.recovery.nics[corp].testIp".into(),
                value: "192.168.100.25".into()
            }
        );
    }
}
