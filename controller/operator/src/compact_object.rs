//! A site object as the site watches keep it: typed metadata, and the rest of the object as
//! the JSON text the API server sent. A parsed tree (`serde_json::Value`, as in kube's
//! `DynamicObject`) costs 7 to 12 times that text in memory (measured on KubeVirt
//! VirtualMachines and VolSync's objects), and a site's watches hold several objects per
//! protected VM. Readers get a `Value` made on each read, as before.

use std::borrow::Cow;

use kube::api::ApiResource;
use kube::core::{DynamicResourceScope, ObjectMeta, Resource};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// An object of any kind: its metadata, and every other top-level field as JSON text.
#[derive(Clone, Debug)]
pub struct CompactObject {
    pub metadata: ObjectMeta,
    rest: Box<RawValue>,
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
        let metadata = match fields.remove("metadata") {
            Some(m) => serde_json::from_value(m).map_err(D::Error::custom)?,
            None => ObjectMeta::default(),
        };
        let rest = serde_json::value::to_raw_value(&fields).map_err(D::Error::custom)?;
        Ok(Self { metadata, rest })
    }
}

impl Serialize for CompactObject {
    /// Field by field, each parsed once straight into what the serializer makes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(self.rest.get()).map_err(S::Error::custom)?;
        let mut map = s.serialize_map(Some(fields.len() + 1))?;
        map.serialize_entry("metadata", &self.metadata)?;
        for (key, value) in &fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl Resource for CompactObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
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
    use kube::ResourceExt;
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
        assert_eq!(compact.labels().get("tier").map(String::as_str), Some("data"));
        assert_eq!(compact.to_value().unwrap(), vm);
        assert_eq!(serde_json::to_value(&compact).unwrap(), vm);
        // What the cache strips stays stripped.
        let mut edited = compact.clone();
        edited.meta_mut().resource_version = None;
        assert!(edited.to_value().unwrap()["metadata"].get("resourceVersion").is_none());
        assert_eq!(edited.to_value().unwrap()["spec"], vm["spec"]);
    }
}
