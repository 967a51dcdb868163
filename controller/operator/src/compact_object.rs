//! A site object as the site watches keep it: its metadata typed, but labels and annotations
//! as sorted pairs, and the rest of the object as the JSON text the API server sent. A parsed
//! tree (`serde_json::Value`, as in kube's `DynamicObject`) costs 7 to 12 times that text
//! in memory (measured on KubeVirt VirtualMachines and VolSync's objects), a `BTreeMap` of
//! labels some 540 B however few they are, and a site's watches hold several objects per
//! protected VM (`benches/cache_memory.rs` measures them). The kind is a [`Kind`], whose
//! names are static, so the store's key of each object carries no copy of them. Readers get
//! a `Value` made on each read, as before.

use std::borrow::Cow;

use kube::core::{DynamicResourceScope, ObjectMeta, Resource};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::kubevirt::dynamic::Kind;

/// An object of any kind: its metadata, and every other top-level field as JSON text.
#[derive(Clone, Debug)]
pub struct CompactObject {
    /// The metadata but labels and annotations (and managedFields, which the caches drop).
    pub metadata: ObjectMeta,
    pub labels: Pairs,
    pub annotations: Pairs,
    rest: Box<RawValue>,
}

/// Labels or annotations, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(Box<str>, Box<str>)]>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keeps the pairs whose key `keep` admits.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        pairs.retain(|(k, _)| keep(k));
        self.0 = pairs.into_boxed_slice();
    }
}

impl From<Option<std::collections::BTreeMap<String, String>>> for Pairs {
    fn from(map: Option<std::collections::BTreeMap<String, String>>) -> Self {
        let pairs = map.into_iter().flatten().map(|(k, v)| (k.into(), v.into()));
        Pairs(pairs.collect())
    }
}

impl Serialize for Pairs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (&**k, &**v)))
    }
}

/// The whole metadata, as the API server sent it.
#[derive(Serialize)]
struct WholeMeta<'a> {
    #[serde(flatten)]
    rest: &'a ObjectMeta,
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    labels: &'a Pairs,
    #[serde(skip_serializing_if = "Pairs::is_empty")]
    annotations: &'a Pairs,
}

impl CompactObject {
    /// The whole object as a JSON tree.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::to_value(self)
    }
}

impl<'de> Deserialize<'de> for CompactObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let mut metadata: ObjectMeta = match fields.remove("metadata") {
            Some(m) => serde_json::from_value(m).map_err(D::Error::custom)?,
            None => ObjectMeta::default(),
        };
        let rest = serde_json::value::to_raw_value(&fields).map_err(D::Error::custom)?;
        Ok(Self {
            labels: metadata.labels.take().into(),
            annotations: metadata.annotations.take().into(),
            metadata,
            rest,
        })
    }
}

impl Serialize for CompactObject {
    /// Field by field, each parsed once straight into what the serializer makes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(self.rest.get()).map_err(S::Error::custom)?;
        let mut map = s.serialize_map(Some(fields.len() + 1))?;
        let metadata = WholeMeta {
            rest: &self.metadata,
            labels: &self.labels,
            annotations: &self.annotations,
        };
        map.serialize_entry("metadata", &metadata)?;
        for (key, value) in &fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl Resource for CompactObject {
    type DynamicType = Kind;
    type Scope = DynamicResourceScope;

    fn group(dt: &Kind) -> Cow<'_, str> {
        dt.group.into()
    }

    fn version(dt: &Kind) -> Cow<'_, str> {
        dt.version.into()
    }

    fn kind(dt: &Kind) -> Cow<'_, str> {
        dt.kind.into()
    }

    fn api_version(dt: &Kind) -> Cow<'_, str> {
        match dt.group {
            "" => dt.version.into(),
            group => format!("{group}/{}", dt.version).into(),
        }
    }

    fn plural(dt: &Kind) -> Cow<'_, str> {
        dt.plural.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_object_reads_back_as_it_came_with_its_metadata_typed() {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "apps", "labels": {"tier": "data"}, "resourceVersion": "7"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {"disks": [{"name": "root"}]}}}}},
            "status": {"printableStatus": "Stopped", "ready": false}
        });
        let compact: CompactObject = serde_json::from_value(vm.clone()).unwrap();
        assert_eq!(compact.metadata.name.as_deref(), Some("db"));
        assert_eq!(compact.labels.get("tier"), Some("data"));
        assert!(compact.metadata.labels.is_none());
        assert_eq!(compact.to_value().unwrap(), vm);
        assert_eq!(serde_json::to_value(&compact).unwrap(), vm);
        // What the cache strips stays stripped.
        let mut edited = compact.clone();
        edited.meta_mut().resource_version = None;
        assert!(edited.to_value().unwrap()["metadata"].get("resourceVersion").is_none());
        assert_eq!(edited.to_value().unwrap()["spec"], vm["spec"]);
    }
}
