//! Names coldsite gives what it makes: valid Kubernetes names however long their parts, and
//! the site namespaces that belong to one management namespace (its test copies, its
//! scripts), so that a tenant's objects never share a namespace with another tenant's.

/// A Kubernetes name of at most 63 characters: long names keep a hash of the whole.
pub fn dns_name(base: &str) -> String {
    if base.len() <= 63 {
        return base.to_owned();
    }
    let hash = fnv(base);
    format!("{}-{hash:08x}", base[..54].trim_end_matches('-'))
}

fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Where test copies of management namespace `namespace`'s runs go at a site that sets no
/// shared `testNamespace`.
pub fn test_namespace(namespace: &str) -> String {
    dns_name(&format!("coldsite-test-{namespace}"))
}

/// Where Job scripts of management namespace `namespace`'s runs go at a site.
pub fn scripts_namespace(namespace: &str) -> String {
    dns_name(&format!("coldsite-scripts-{namespace}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_stay_valid_and_distinct() {
        let a = dns_name(&"x".repeat(80));
        let b = dns_name(&format!("{}y", "x".repeat(79)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(dns_name("coldsite-dc01"), "coldsite-dc01");
    }

    #[test]
    fn each_tenant_gets_its_own_site_namespaces() {
        let long = "n".repeat(63);
        for ns in ["exchange", "sharepoint", long.as_str()] {
            for made in [test_namespace(ns), scripts_namespace(ns)] {
                assert!(made.len() <= 63 && made.starts_with("coldsite-"), "{made}");
            }
        }
        assert_ne!(test_namespace("exchange"), test_namespace("sharepoint"));
        assert_ne!(test_namespace(&long), test_namespace(&format!("{}m", "n".repeat(62))));
        assert_eq!(scripts_namespace("exchange"), "coldsite-scripts-exchange");
    }
}
