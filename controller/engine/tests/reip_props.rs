//! Property tests for re-IP: host bits survive translation, inversion undoes it, the longest prefix wins, and cloud-init rendering round-trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coldsite_engine::cloudinit::{parse_network_config, render_network_config};
use coldsite_engine::reip::{AddressSource, NicPlan, SubnetMap, invert, translate};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

fn rule(source: IpNet, target: IpNet) -> SubnetMap {
    SubnetMap {
        source,
        target,
        gateway: None,
        dns: Vec::new(),
        search: Vec::new(),
    }
}

/// One module per family; the bodies differ only in the address types and widths.
macro_rules! family_props {
    ($module:ident, $Net:ident, $Addr:ident, $Int:ty, $BITS:expr, $Ip:ident) => {
        mod $module {
            use super::*;

            const BITS: u8 = $BITS;

            fn mask(prefix: u8) -> $Int {
                // checked_shl: a shift by the full width would overflow at prefix 0.
                (<$Int>::MAX).checked_shl(u32::from(BITS - prefix)).unwrap_or(0)
            }

            /// The network of `prefix` bits around `bits`, host bits cleared.
            fn network(bits: $Int, prefix: u8) -> IpNet {
                IpNet::$Ip($Net::new($Addr::from(bits & mask(prefix)), prefix).unwrap())
            }

            /// The host address in `net` with host part `host`, carrying the net's prefix.
            fn host_in(net: IpNet, host: $Int) -> IpNet {
                let bits = int(net.addr()) | (host & !mask(net.prefix_len()));
                IpNet::$Ip($Net::new($Addr::from(bits), net.prefix_len()).unwrap())
            }

            fn int(ip: IpAddr) -> $Int {
                match ip {
                    IpAddr::$Ip(a) => <$Int>::from(a),
                    other => panic!("{other} is of the wrong family"),
                }
            }

            /// Bit `k` counted from the most significant, as a mask.
            fn bit(k: u8) -> $Int {
                let one: $Int = 1;
                one << (BITS - 1 - k)
            }

            /// A source and a target network of one prefix length, and a host part.
            fn pair() -> impl Strategy<Value = (IpNet, IpNet, $Int)> {
                (1..=BITS, any::<$Int>(), any::<$Int>(), any::<$Int>())
                    .prop_map(|(p, s, t, h)| (network(s, p), network(t, p), h))
            }

            /// Nested sources: `outer` strictly contains `inner`. Also their targets, a host
            /// part, and a bit index between the two prefixes.
            fn nested() -> impl Strategy<Value = (IpNet, IpNet, IpNet, IpNet, $Int, u8)> {
                (1..BITS)
                    .prop_flat_map(|p1| (Just(p1), (p1 + 1)..=BITS))
                    .prop_flat_map(|(p1, p2)| {
                        (
                            Just(p1),
                            Just(p2),
                            p1..p2,
                            any::<$Int>(),
                            any::<$Int>(),
                            any::<$Int>(),
                            any::<$Int>(),
                        )
                    })
                    .prop_map(|(p1, p2, k, s, t1, t2, h)| {
                        (
                            network(s, p1),
                            network(s, p2),
                            network(t1, p1),
                            network(t2, p2),
                            h,
                            k,
                        )
                    })
            }

            fn gateway_in(net: IpNet, host: $Int) -> IpAddr {
                host_in(net, host).addr()
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(256))]

                #[test]
                fn translate_keeps_host_bits((src, tgt, h) in pair()) {
                    let addr = host_in(src, h);
                    let out = translate(addr, &[rule(src, tgt)]).unwrap();
                    let hostmask = !mask(src.prefix_len());
                    prop_assert_eq!(int(out.addr()) & hostmask, int(addr.addr()) & hostmask);
                    prop_assert!(tgt.contains(&out.addr()), "{} not in {}", out, tgt);
                    prop_assert_eq!(out.prefix_len(), tgt.prefix_len());
                }

                #[test]
                fn inverse_undoes_translate((src, tgt, h) in pair()) {
                    let rules = vec![rule(src, tgt)];
                    let addr = host_in(src, h);
                    let there = translate(addr, &rules).unwrap();
                    prop_assert_eq!(translate(there, &invert(&rules)), Some(addr));
                }

                #[test]
                fn outside_every_source_is_not_translated(
                    (src, tgt, h) in pair(),
                    k in 0..BITS,
                ) {
                    // Flipping a network bit leaves the source network.
                    let k = k % src.prefix_len();
                    let inside = host_in(src, h);
                    let outside = IpNet::$Ip(
                        $Net::new($Addr::from(int(inside.addr()) ^ bit(k)), src.prefix_len()).unwrap(),
                    );
                    prop_assert!(!src.contains(&outside.addr()));
                    prop_assert_eq!(translate(outside, &[rule(src, tgt)]), None);
                }

                #[test]
                fn longest_prefix_wins(
                    (outer, inner, t_outer, t_inner, h, k) in nested(),
                    inner_first in any::<bool>(),
                ) {
                    let mut rules = vec![rule(outer, t_outer), rule(inner, t_inner)];
                    if inner_first {
                        rules.reverse();
                    }
                    let in_inner = host_in(inner, h);
                    let out = translate(in_inner, &rules).unwrap();
                    prop_assert!(t_inner.contains(&out.addr()), "{} not in {}", out, t_inner);
                    prop_assert_eq!(out.prefix_len(), inner.prefix_len());

                    // A bit between the two prefixes moves the address out of inner only.
                    let only_outer = IpNet::$Ip(
                        $Net::new($Addr::from(int(in_inner.addr()) ^ bit(k)), outer.prefix_len()).unwrap(),
                    );
                    prop_assert!(outer.contains(&only_outer.addr()) && !inner.contains(&only_outer.addr()));
                    let out = translate(only_outer, &rules).unwrap();
                    prop_assert!(t_outer.contains(&out.addr()), "{} not in {}", out, t_outer);
                    prop_assert_eq!(out.prefix_len(), outer.prefix_len());
                }

                #[test]
                fn cloud_init_round_trips(
                    nics in prop::collection::btree_map(
                        "[a-z][a-z0-9-]{0,14}",
                        (
                            proptest::option::of("[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
                            prop::collection::vec(pair(), 0..4),
                            any::<Option<$Int>>(),
                            any::<bool>(),
                        ),
                        0..5,
                    ),
                ) {
                    let plans: Vec<NicPlan> = nics
                        .iter()
                        .map(|(name, (mac, nets, gw, dhcp))| {
                            let addresses: Vec<IpNet> =
                                nets.iter().map(|(src, _, h)| host_in(*src, *h)).collect();
                            let gateway = match (gw, addresses.first()) {
                                (Some(g), Some(a)) => Some(gateway_in(a.trunc(), *g)),
                                _ => None,
                            };
                            let (gateway4, gateway6): (Option<Ipv4Addr>, Option<Ipv6Addr>) = match gateway {
                                Some(IpAddr::V4(g)) => (Some(g), None),
                                Some(IpAddr::V6(g)) => (None, Some(g)),
                                None => (None, None),
                            };
                            NicPlan {
                                name: name.clone(),
                                mac: mac.clone(),
                                addresses,
                                gateway4,
                                gateway6,
                                dns: gateway.into_iter().collect(),
                                search: Vec::new(),
                                dhcp4: *dhcp,
                                dhcp6: false,
                                source: AddressSource::Subnet,
                            }
                        })
                        .collect();
                    let text = render_network_config(&plans).unwrap();
                    prop_assert_eq!(&text, &render_network_config(&plans).unwrap());
                    let back = parse_network_config(&text).unwrap();
                    // Rendering orders NICs by name, as the BTreeMap already did.
                    prop_assert_eq!(back.len(), plans.len());
                    for (p, n) in plans.iter().zip(&back) {
                        prop_assert_eq!(&p.name, &n.name);
                        prop_assert_eq!(&p.mac, &n.mac);
                        prop_assert_eq!(&p.addresses, &n.addresses);
                        prop_assert_eq!(p.gateway4, n.gateway4);
                        prop_assert_eq!(p.gateway6, n.gateway6);
                    }
                }
            }
        }
    };
}

family_props!(ipv4, Ipv4Net, Ipv4Addr, u32, 32, V4);
family_props!(ipv6, Ipv6Net, Ipv6Addr, u128, 128, V6);
