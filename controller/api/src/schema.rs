//! Schema overrides for fields whose generated schema would not suit a CRD.

use schemars::{Schema, SchemaGenerator, json_schema};

/// An embedded Kubernetes object template kept opaque in the CRD.
///
/// A full `JobTemplateSpec` schema inlines the whole PodSpec once per use, which makes the CRD
/// several hundred KiB. The controller and `kubectl-coldsite validate` check it with the typed
/// `k8s-openapi` struct instead, and the Job's own validation runs when the Job is created.
pub fn embedded_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A batch/v1 JobTemplateSpec: metadata and spec of the Job to run.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
