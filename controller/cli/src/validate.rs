//! `validate`: manifests checked offline against the CRD schema and CEL rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use coldsite_api::manifest::{SchemaChecker, describe, into_typed, parse_documents};
use serde_json::Value;

/// Checks every manifest under `paths`; `Ok(false)` when any is invalid.
pub fn run(paths: &[PathBuf], quiet: bool) -> anyhow::Result<bool> {
    let checker = SchemaChecker::new().context("building the schema checker")?;
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    if files.is_empty() {
        anyhow::bail!("no .yaml, .yml or .json files under {paths:?}");
    }
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let (mut checked, mut errors) = (0usize, 0usize);
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let docs = match parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                println!("✗ {}: {e}", file.display());
                errors += 1;
                continue;
            }
        };
        for doc in docs {
            if !checker.knows(&doc) {
                continue;
            }
            checked += 1;
            let key = identity(&doc);
            let old = seen.get(&key);
            let mut violations = checker.check(&doc, old);
            if violations.is_empty()
                && let Err(v) = into_typed(&doc)
            {
                violations.push(v);
            }
            let what = describe(&doc);
            if violations.is_empty() {
                if !quiet {
                    let verb = if old.is_some() { "update of " } else { "" };
                    println!("✓ {}: {verb}{what}", file.display());
                }
                seen.insert(key, doc);
            } else {
                errors += violations.len();
                for v in violations {
                    println!("✗ {}: {what}: {v}", file.display());
                }
                // A refused update leaves the first version standing, as on a server.
                seen.entry(key).or_insert(doc);
            }
        }
    }
    println!(
        "{checked} coldsite object(s) in {} file(s): {}",
        files.len(),
        if errors == 0 {
            "valid".to_owned()
        } else {
            format!("{errors} error(s)")
        }
    );
    Ok(errors == 0)
}

fn identity(doc: &Value) -> String {
    let meta = &doc["metadata"];
    format!(
        "{}/{}/{}",
        doc["kind"].as_str().unwrap_or_default(),
        meta["namespace"].as_str().unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || is_manifest(&entry) {
                collect(&entry, out)?;
            }
        }
    } else if path.exists() {
        out.push(path.to_owned());
    } else {
        anyhow::bail!("{} does not exist", path.display());
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}
