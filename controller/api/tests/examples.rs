//! The examples against the shipped CRDs, with no server: the Exchange scenario passes the
//! schema and every CEL rule and round-trips through the types; each invalid manifest is
//! refused with the text its `# expect:` line names.

use std::path::{Path, PathBuf};

use coldsite_api::manifest::{SchemaChecker, into_typed, parse_documents};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The checker built from `crds/`, the files users install, not from the types.
fn shipped_checker() -> SchemaChecker {
    let crds: Vec<CustomResourceDefinition> = yaml_files(&repo().join("crds"))
        .iter()
        .map(|p| serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(crds.len(), 5, "crds/ holds one CRD per kind");
    SchemaChecker::from_crds(&crds).unwrap()
}

/// Every field the manifest sets survives the trip through the types with its value.
fn assert_subset(original: &Value, round_tripped: &Value, path: &str) {
    match (original, round_tripped) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{path}.{k}");
                let other = b.get(k).unwrap_or_else(|| panic!("{child} was dropped by the types"));
                assert_subset(v, other, &child);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_subset(x, y, &format!("{path}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{path} changed in the round trip"),
    }
}

#[test]
fn crds_folder_matches_the_types() {
    for crd in coldsite_api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let shipped: CustomResourceDefinition =
            serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join(format!("crds/{name}.yaml"))).unwrap())
                .unwrap();
        assert_eq!(
            shipped, crd,
            "crds/{name}.yaml is stale: run `cargo run -p coldsite-api --bin crdgen`"
        );
    }
}

#[test]
fn exchange_example_passes_schema_and_rules_and_round_trips() {
    let checker = shipped_checker();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for path in yaml_files(&repo().join("examples/exchange")) {
        for doc in parse_documents(&std::fs::read_to_string(&path).unwrap()).unwrap() {
            if !checker.knows(&doc) {
                continue;
            }
            let violations = checker.check(&doc, None);
            assert!(violations.is_empty(), "{}: {violations:?}", path.display());
            let typed = into_typed(&doc).unwrap_or_else(|v| panic!("{}: {v}", path.display()));
            let back = typed.to_value().unwrap();
            assert_subset(&doc, &back, &path.display().to_string());
            // A second trip changes nothing: defaults are stable.
            assert_eq!(into_typed(&back).unwrap().to_value().unwrap(), back);
            *kinds.entry(doc["kind"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    let expected = [
        ("NetworkMapping", 1),
        ("ProtectedVM", 3),
        ("RecoveryPlan", 1),
        ("RecoveryRun", 2),
        ("Site", 2),
    ];
    let got: Vec<(&str, usize)> = kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(got, expected);
}

fn expectation(text: &str, path: &Path) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn every_invalid_example_is_refused_with_its_message() {
    let checker = shipped_checker();
    let files = yaml_files(&repo().join("examples/invalid"));
    assert!(files.len() >= 12, "at least 12 invalid examples");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = expectation(&text, &path);
        let docs = parse_documents(&text).unwrap();
        let violations = match docs.as_slice() {
            [object] => checker.check(object, None),
            [old, new] => {
                let created = checker.check(old, None);
                assert!(
                    created.is_empty(),
                    "{}: the object before the update must be valid: {created:?}",
                    path.display()
                );
                checker.check(new, Some(old))
            }
            _ => panic!("{}: one document, or two for an update", path.display()),
        };
        let rendered: Vec<String> = violations.iter().map(ToString::to_string).collect();
        // Refused, and for that reason alone: the rest of the manifest is valid.
        assert!(
            !rendered.is_empty() && rendered.iter().all(|v| v.contains(&expect)),
            "{}: expected only rejections containing {expect:?}, got {rendered:#?}",
            path.display()
        );
    }
}

/// Every distinct CEL rule in the CRDs fails for at least one invalid example, so each rule
/// is seen to fire, not just to compile.
#[test]
fn every_cel_rule_fires_for_some_invalid_example() {
    fn rules(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(list)) = m.get("x-kubernetes-validations") {
                    out.extend(list.iter().filter_map(|r| r["rule"].as_str().map(str::to_owned)));
                }
                m.values().for_each(|c| rules(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| rules(c, out)),
            _ => {}
        }
    }
    let mut all = std::collections::BTreeSet::new();
    for crd in coldsite_api::crds() {
        rules(&serde_json::to_value(crd).unwrap(), &mut all);
    }
    let checker = shipped_checker();
    let mut fired = std::collections::BTreeSet::new();
    for path in yaml_files(&repo().join("examples/invalid")) {
        let docs = parse_documents(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let violations = match docs.as_slice() {
            [object] => checker.check(object, None),
            [old, new] => checker.check(new, Some(old)),
            _ => Vec::new(),
        };
        fired.extend(violations.into_iter().filter_map(|v| v.rule));
    }
    let silent: Vec<&String> = all.difference(&fired).collect();
    assert!(
        silent.is_empty(),
        "CEL rules that no invalid example makes fail: {silent:#?}"
    );
}
