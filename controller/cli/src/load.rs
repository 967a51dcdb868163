//! Manifests from files and folders: parsed, schema-checked, and gathered into the engine's
//! inventory for the cross-object checks.

use std::path::{Path, PathBuf};

use anyhow::Context;
use coldsite_api::manifest::{ColdsiteObject, SchemaChecker, Violation, describe, parse_documents};
use coldsite_api::{RecoveryPlan, RecoveryRun};
use coldsite_engine::source_vm;
use coldsite_engine::validate::Inventory;
use kube::ResourceExt;
use serde_json::Value;

/// What a folder of manifests holds, after the schema checks.
#[derive(Default)]
pub struct Loaded {
    pub inventory: Inventory,
    pub plans: Vec<RecoveryPlan>,
    pub runs: Vec<RecoveryRun>,
    /// Schema violations, by file and object.
    pub violations: Vec<(PathBuf, String, Violation)>,
    /// Files that could not be parsed.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Objects accepted, with their file, for reporting.
    pub accepted: Vec<(PathBuf, String, bool)>,
    pub files: usize,
}

/// Every .yaml, .yml and .json file under `paths`, in a stable order.
pub fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        walk(path, &mut out)?;
    }
    if out.is_empty() {
        anyhow::bail!("no .yaml, .yml or .json files under {paths:?}");
    }
    Ok(out)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            let manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if entry.is_dir() || manifest {
                walk(&entry, out)?;
            }
        }
    } else if path.exists() {
        out.push(path.to_owned());
    } else {
        anyhow::bail!("{} does not exist", path.display());
    }
    Ok(())
}

/// Loads manifests. An object that appears twice is checked as an update of its first
/// appearance, as `kubectl apply` would apply it. Namespaced objects without a namespace
/// land in `namespace`.
pub fn load(paths: &[PathBuf], namespace: &str) -> anyhow::Result<Loaded> {
    let checker = SchemaChecker::new().context("building the schema checker")?;
    let files = collect(paths)?;
    let mut loaded = Loaded {
        files: files.len(),
        ..Loaded::default()
    };
    let mut seen: std::collections::BTreeMap<String, Value> = Default::default();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let docs = match parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                loaded.unreadable.push((file, e.to_string()));
                continue;
            }
        };
        for mut value in docs {
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            if kind == "VirtualMachine"
                && value["apiVersion"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("kubevirt.io/"))
            {
                match source_vm::from_manifest(&value, namespace) {
                    Ok(vm) => {
                        loaded
                            .inventory
                            .source_vms
                            .insert((vm.namespace.clone(), vm.name.clone()), vm);
                    }
                    Err(e) => loaded.unreadable.push((file.clone(), e.to_string())),
                }
                continue;
            }
            if !checker.knows(&value) {
                continue;
            }
            if kind != "Site" && value["metadata"]["namespace"].is_null() {
                value["metadata"]["namespace"] = Value::String(namespace.to_owned());
            }
            let what = describe(&value);
            let key = format!("{kind}/{what}");
            let old = seen.get(&key);
            match checker.check_typed(&value, old) {
                Ok(object) => {
                    loaded.accepted.push((file.clone(), what, old.is_some()));
                    seen.insert(key, value);
                    add(&mut loaded, object);
                }
                Err(violations) => {
                    for v in violations {
                        loaded.violations.push((file.clone(), what.clone(), v));
                    }
                    // A refused update leaves the first version standing, as on a server.
                    seen.entry(key).or_insert(value);
                }
            }
        }
    }
    Ok(loaded)
}

fn add(loaded: &mut Loaded, object: ColdsiteObject) {
    let inv = &mut loaded.inventory;
    let key = |ns: Option<String>, name: String| (ns.unwrap_or_else(|| "default".into()), name);
    match object {
        ColdsiteObject::Site(s) => {
            inv.sites.insert(s.name_any(), *s);
        }
        ColdsiteObject::NetworkMapping(m) => {
            inv.mappings.insert(key(m.namespace(), m.name_any()), *m);
        }
        ColdsiteObject::ProtectedVM(p) => {
            inv.protected_vms.insert(key(p.namespace(), p.name_any()), *p);
        }
        ColdsiteObject::RecoveryPlan(p) => {
            loaded
                .plans
                .retain(|q| !(q.name_any() == p.name_any() && q.namespace() == p.namespace()));
            loaded.plans.push(*p);
        }
        ColdsiteObject::RecoveryRun(r) => {
            loaded
                .runs
                .retain(|q| !(q.name_any() == r.name_any() && q.namespace() == r.namespace()));
            loaded.runs.push(*r);
        }
    }
}
