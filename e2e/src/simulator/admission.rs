//! The rules of KubeVirt's virt-api admission webhook that coldsite's writes meet, as
//! ValidatingAdmissionPolicies: the API server enforces them on every VirtualMachine create
//! and update, as it calls virt-api's `virtualmachine-validator.kubevirt.io` on a real site.
//! Each rule cites the upstream file of `kubevirt.io/kubevirt` v1.7.0 it follows and keeps
//! its message; a denial reads `ValidatingAdmissionPolicy '<name>' ... denied request:
//! <message>` instead of `admission webhook "virtualmachine-validator.kubevirt.io" denied the
//! request: <message>`.

use serde_json::{Value, json};

/// Where the rules apply: VirtualMachine writes, as virt-api's validating webhook.
fn match_vms() -> Value {
    json!({"resourceRules": [{
        "apiGroups": ["kubevirt.io"], "apiVersions": ["v1", "v1alpha3"],
        "operations": ["CREATE", "UPDATE"], "resources": ["virtualmachines"],
    }]})
}

struct Rule {
    expression: String,
    message: &'static str,
    /// Overrides `message` with the offending value, as upstream's message shows it.
    message_expression: Option<&'static str>,
}

impl Rule {
    fn new(expression: impl Into<String>, message: &'static str) -> Self {
        Self {
            expression: expression.into(),
            message,
            message_expression: None,
        }
    }

    fn showing(mut self, message_expression: &'static str) -> Self {
        self.message_expression = Some(message_expression);
        self
    }
}

fn policy(name: &str, variables: Value, rules: &[Rule]) -> [Value; 2] {
    let validations: Vec<Value> = rules
        .iter()
        .map(|r| {
            let mut v = json!({"expression": r.expression, "message": r.message, "reason": "Invalid"});
            if let Some(m) = r.message_expression {
                v["messageExpression"] = json!(m);
            }
            v
        })
        .collect();
    [
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name, "labels": {"coldsite.io/simulated": "virt-api"}},
            "spec": {"failurePolicy": "Fail", "matchConstraints": match_vms(),
                     "variables": variables, "validations": validations},
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": {"coldsite.io/simulated": "virt-api"}},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        }),
    ]
}

/// pkg/virt-api/webhooks/validating-webhook/admitters/vms-admitter.go, validateRunStrategy
/// (lines 230-276).
fn run_strategy() -> [Value; 2] {
    policy(
        "kubevirt-vm-run-strategy.sim.coldsite.io",
        json!([]),
        &[
            Rule::new(
                "!(has(object.spec.running) && has(object.spec.runStrategy))",
                "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead",
            ),
            Rule::new(
                "has(object.spec.running) || has(object.spec.runStrategy)",
                "RunStrategy must be specified",
            ),
            Rule::new(
                "!has(object.spec.runStrategy) || object.spec.runStrategy in ['Halted', 'Manual', 'Always', 'RerunOnFailure', 'Once']",
                "Invalid RunStrategy",
            )
            .showing("'Invalid RunStrategy (' + object.spec.runStrategy + ')'"),
        ],
    )
}

/// pkg/network/admitter/netiface.go (interfaces and networks by name, MAC format via
/// link/mac.go) and binding.go (masquerade only on the pod network).
fn networks() -> [Value; 2] {
    policy(
        "kubevirt-vm-networks.sim.coldsite.io",
        json!([
            {"name": "ifaces", "expression": "has(object.spec.template.spec) && has(object.spec.template.spec.domain.devices.interfaces) ? object.spec.template.spec.domain.devices.interfaces : []"},
            {"name": "nets", "expression": "has(object.spec.template.spec) && has(object.spec.template.spec.networks) ? object.spec.template.spec.networks : []"},
            // net.ParseMAC's 6-byte forms.
            {"name": "badMacs", "expression": "variables.ifaces.filter(i, has(i.macAddress) && i.macAddress != '' && !i.macAddress.matches('^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$') && !i.macAddress.matches('^([0-9A-Fa-f]{4}[.]){2}[0-9A-Fa-f]{4}$'))"},
        ]),
        &[
            Rule::new(
                "variables.ifaces.all(i, variables.nets.exists(n, n.name == i.name))",
                "an interface has no network of its name",
            )
            .showing("'spec.template.spec.domain.devices.interfaces name \\'' + variables.ifaces.filter(i, !variables.nets.exists(n, n.name == i.name))[0].name + '\\' not found.'"),
            Rule::new(
                "variables.nets.all(n, variables.ifaces.exists(i, i.name == n.name))",
                "a network has no interface of its name",
            )
            .showing("'spec.template.spec.networks name \\'' + variables.nets.filter(n, !variables.ifaces.exists(i, i.name == n.name))[0].name + '\\' not found.'"),
            Rule::new(
                "variables.ifaces.all(i, !has(i.masquerade) || variables.nets.exists(n, n.name == i.name && has(n.pod)))",
                "Masquerade interface only implemented with pod network",
            ),
            Rule::new("size(variables.badMacs) == 0", "an interface has a malformed MAC address").showing(
                "'interface ' + variables.badMacs[0].name + ' has malformed MAC address (' + variables.badMacs[0].macAddress + ').'",
            ),
        ],
    )
}

/// pkg/virt-api/webhooks/validating-webhook/admitters/vmi-create-admitter.go, the
/// cloud-init checks of validateVolumes (lines 1666-1771): one network-data source, at most
/// 2048 bytes of it.
fn cloud_init() -> [Value; 2] {
    let one_source = |ci: &str| {
        format!(
            "!has(v.{ci}) || (has(v.{ci}.networkData) ? 1 : 0) + (has(v.{ci}.networkDataBase64) ? 1 : 0) + (has(v.{ci}.networkDataSecretRef) ? 1 : 0) <= 1"
        )
    };
    let bounded = |ci: &str| format!("!has(v.{ci}) || !has(v.{ci}.networkData) || size(v.{ci}.networkData) <= 2048");
    let all = |check: String| format!("variables.volumes.all(v, {check})");
    let rules = [
        (
            all(one_source("cloudInitNoCloud")),
            "spec.template.spec.volumes[].cloudInitNoCloud must have only one networkdata source set.",
        ),
        (
            all(one_source("cloudInitConfigDrive")),
            "spec.template.spec.volumes[].cloudInitConfigDrive must have only one networkdata source set.",
        ),
        (
            all(bounded("cloudInitNoCloud")),
            "spec.template.spec.volumes[].cloudInitNoCloud networkdata exceeds 2048 byte limit. Should use NetworkDataSecretRef for larger data.",
        ),
        (
            all(bounded("cloudInitConfigDrive")),
            "spec.template.spec.volumes[].cloudInitConfigDrive networkdata exceeds 2048 byte limit. Should use NetworkDataSecretRef for larger data.",
        ),
    ];
    let rules: Vec<Rule> = rules
        .into_iter()
        .map(|(expression, message)| Rule::new(expression, message))
        .collect();
    policy(
        "kubevirt-vm-cloud-init.sim.coldsite.io",
        json!([{"name": "volumes", "expression": "has(object.spec.template.spec) && has(object.spec.template.spec.volumes) ? object.spec.template.spec.volumes : []"}]),
        &rules,
    )
}

/// The policies and their bindings, to apply at every site.
pub fn policies() -> Vec<Value> {
    [run_strategy(), networks(), cloud_init()]
        .into_iter()
        .flatten()
        .collect()
}
