//! CEL rules shared by several kinds.
//!
//! Each helper returns a [`Rule`] whose message names the field and says what is allowed,
//! because that message is all a person sees when `kubectl apply` is refused.

use kube::core::{Message, Reason, Rule};

/// A Go duration as `time.ParseDuration` reads it, positive, without `µs`.
pub const DURATION_RE: &str = r"^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// A DNS-1123 label: how Kubernetes names most things.
pub const DNS_LABEL_RE: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An RFC 3339 timestamp in UTC or with an offset.
pub const RFC3339_RE: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$";

/// A Kubernetes resource quantity as memory is written: a positive number with a binary or
/// decimal suffix (`8Gi`, `8192Mi`, `8G`) or an exponent. Not `32GB`: KubeVirt would refuse
/// the recovered VM at failover time.
pub const MEMORY_QUANTITY_RE: &str = r"^([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[kMGTPE]|[eE][+-]?[0-9]+)?$";

/// `self` (an int-or-string quantity) is a memory size Kubernetes understands.
pub fn memory_quantity(field: &str) -> Rule {
    Rule::new(format!("string(self).matches('{MEMORY_QUANTITY_RE}')"))
        .message(Message::Message(format!(
            "{field} must be a Kubernetes quantity such as 8Gi or 8192Mi (suffixes Ki, Mi, Gi, Ti or k, M, G, T); \
             32GB, for example, is not one"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// `self` is a duration such as `15m` or `1h30m`.
pub fn duration(field: &str) -> Rule {
    Rule::new(format!("self.matches('{DURATION_RE}')"))
        .message(Message::Message(format!(
            "{field} must be a duration such as 30s, 15m, 1h or 1h30m (units ns, us, ms, s, m, h)"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// `self` is a DNS-1123 label, as Kubernetes object names are.
pub fn dns_label(field: &str) -> Rule {
    Rule::new(format!("self.matches('{DNS_LABEL_RE}')"))
        .message(Message::Message(format!(
            "{field} must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// Each item of `self` is a DNS-1123 label, such as a namespace name.
pub fn dns_labels(field: &str) -> Rule {
    Rule::new(format!("self.all(n, n.matches('{DNS_LABEL_RE}'))"))
        .message(Message::Message(format!(
            "{field}: each entry must be a DNS-1123 label such as a namespace name: lower-case letters, digits and '-', starting and ending with a letter or digit"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// `self` is a network address such as `10.0.1.0/24` or `fd00:1::/64`.
pub fn network_cidr(field: &str) -> Rule {
    Rule::new("isCIDR(self) && cidr(self) == cidr(self).masked()")
        .message(Message::Message(format!(
            "{field} must be a network in CIDR notation with no host bits set, such as 10.0.1.0/24 or fd00:1::/64"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// `self` is a host address with its prefix, such as `10.50.1.25/24`.
pub fn host_cidr(field: &str) -> Rule {
    Rule::new("isCIDR(self)")
        .message(Message::Message(format!(
            "{field} must be an address with its prefix length, such as 10.50.1.25/24 or fd00:50::25/64"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// `self` is a plain IP address.
pub fn ip(field: &str) -> Rule {
    Rule::new("isIP(self)")
        .message(Message::Message(format!(
            "{field} must be an IP address such as 10.50.1.1 or fd00:50::1"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// A list of objects whose `name` is unique.
pub fn unique_names(field: &str, what: &str) -> Rule {
    Rule::new("self.all(x, self.exists_one(y, y.name == x.name))")
        .message(Message::Message(format!(
            "{field}: each {what} name must be unique; rename or remove the duplicate"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// A KubeVirt network reference: `pod`, or a Multus network `namespace/name`.
pub fn kubevirt_network(field: &str) -> Rule {
    Rule::new("self == 'pod' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message(Message::Message(format!(
            "{field} must be 'pod' or a Multus network as namespace/name, such as corp/lan"
        )))
        .reason(Reason::FieldValueInvalid)
}

/// The two sites of a pair differ.
pub fn distinct_sites(a: &str, b: &str) -> Rule {
    Rule::new(format!("self.{a} != self.{b}"))
        .message(Message::Message(format!(
            "spec.{a} and spec.{b} must name different Sites: a VM cannot be recovered onto the site it is protected from"
        )))
        .field_path(format!(".{b}"))
        .reason(Reason::FieldValueInvalid)
}
