//! Manifests checked without a server: YAML documents are parsed, checked against the CRD
//! schema (structure, enums, bounds, unknown fields) and CEL rules as the apiserver would,
//! then read into the typed resources. Errors read like the apiserver's, so a GitOps CI job
//! shows what `kubectl apply` would have said.

use std::collections::BTreeMap;
use std::fmt;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{ErrorKind as CelErrorKind, Validator as CelValidator};
use serde_json::Value;

use crate::{NetworkMapping, ProtectedVM, RecoveryPlan, RecoveryRun, Site};

/// Something wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Violation {
    /// Where, as the apiserver names fields: `spec.groups[0].name`.
    pub field: String,
    pub message: String,
    /// The CEL rule that failed, when one did.
    pub rule: Option<String>,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            rule: None,
        }
    }
}

/// A document that could not even be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("document {index}: a Kubernetes object needs apiVersion and kind")]
    NotAnObject { index: usize },
}

/// Splits a YAML stream into JSON objects, skipping empty documents.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ParseError> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|source| ParseError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        if value.get("apiVersion").and_then(Value::as_str).is_none()
            || value.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ParseError::NotAnObject { index });
        }
        out.push(value);
    }
    Ok(out)
}

/// A coldsite object, typed.
#[derive(Debug, Clone)]
pub enum ColdsiteObject {
    Site(Box<Site>),
    NetworkMapping(Box<NetworkMapping>),
    ProtectedVM(Box<ProtectedVM>),
    RecoveryPlan(Box<RecoveryPlan>),
    RecoveryRun(Box<RecoveryRun>),
}

impl ColdsiteObject {
    /// Serializes back to JSON, for round-trip checks.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            ColdsiteObject::Site(o) => serde_json::to_value(o),
            ColdsiteObject::NetworkMapping(o) => serde_json::to_value(o),
            ColdsiteObject::ProtectedVM(o) => serde_json::to_value(o),
            ColdsiteObject::RecoveryPlan(o) => serde_json::to_value(o),
            ColdsiteObject::RecoveryRun(o) => serde_json::to_value(o),
        }
    }
}

struct KindSchema {
    /// The openAPIV3Schema, with unknown fields forbidden.
    structural: jsonschema::Validator,
    /// The openAPIV3Schema as shipped, for the CEL rules.
    openapi: Value,
}

/// Checks objects of coldsite's kinds against the schema and rules of the shipped CRDs.
pub struct SchemaChecker {
    kinds: BTreeMap<String, KindSchema>,
    cel: CelValidator,
}

/// Why a checker could not be built from CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("CRD {0} has no openAPIV3Schema")]
    NoSchema(String),
    #[error("CRD {crd}: the schema does not compile: {message}")]
    BadSchema { crd: String, message: String },
    #[error("CRD {crd}: serializing the schema: {source}")]
    Json {
        crd: String,
        #[source]
        source: serde_json::Error,
    },
}

impl SchemaChecker {
    /// A checker for the CRDs the API types generate.
    pub fn new() -> Result<Self, CheckerError> {
        Self::from_crds(&crate::crds())
    }

    /// A checker for the given CRDs, such as the YAML files in `crds/`.
    pub fn from_crds(crds: &[CustomResourceDefinition]) -> Result<Self, CheckerError> {
        let mut kinds = BTreeMap::new();
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            for version in &crd.spec.versions {
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .ok_or_else(|| CheckerError::NoSchema(name.clone()))?;
                let openapi = serde_json::to_value(schema).map_err(|source| CheckerError::Json {
                    crd: name.clone(),
                    source,
                })?;
                let mut strict = openapi.clone();
                make_strict(&mut strict);
                // The CRD schema leaves the object's envelope to the apiserver.
                if let Some(props) = strict.get_mut("properties").and_then(Value::as_object_mut) {
                    for field in ["apiVersion", "kind", "metadata"] {
                        props.entry(field).or_insert_with(|| serde_json::json!({}));
                    }
                }
                let structural = jsonschema::validator_for(&strict).map_err(|e| CheckerError::BadSchema {
                    crd: name.clone(),
                    message: e.to_string(),
                })?;
                let api_version = format!("{}/{}", crd.spec.group, version.name);
                kinds.insert(
                    format!("{api_version}/{}", crd.spec.names.kind),
                    KindSchema { structural, openapi },
                );
            }
        }
        Ok(Self {
            kinds,
            cel: CelValidator::new(),
        })
    }

    /// Whether this checker knows the object's kind.
    pub fn knows(&self, object: &Value) -> bool {
        self.kinds.contains_key(&kind_key(object))
    }

    /// All violations of the schema and CEL rules, as a create (`old` is None) or an update.
    /// Objects of other kinds yield none.
    pub fn check(&self, object: &Value, old: Option<&Value>) -> Vec<Violation> {
        let Some(kind) = self.kinds.get(&kind_key(object)) else {
            return Vec::new();
        };
        let mut out = structural_violations(&kind.structural, object);
        if let Err(errors) = self.cel.validate(&kind.openapi, object, old) {
            for e in errors.iter() {
                out.push(cel_violation(e));
            }
        }
        out
    }

    /// Checks, then reads the object into its typed resource.
    pub fn check_typed(&self, object: &Value, old: Option<&Value>) -> Result<ColdsiteObject, Vec<Violation>> {
        let violations = self.check(object, old);
        if !violations.is_empty() {
            return Err(violations);
        }
        into_typed(object).map_err(|v| vec![v])
    }
}

/// Reads an object of a coldsite kind into its type.
pub fn into_typed(object: &Value) -> Result<ColdsiteObject, Violation> {
    let key = kind_key(object);
    let typed = |e: serde_json::Error| Violation::new(describe(object), format!("cannot be read as {key}: {e}"));
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    if object.get("apiVersion").and_then(Value::as_str) != Some(crate::API_VERSION) {
        return Err(Violation::new(
            describe(object),
            format!("apiVersion must be {} for coldsite kinds", crate::API_VERSION),
        ));
    }
    let o = object.clone();
    Ok(match kind {
        "Site" => ColdsiteObject::Site(serde_json::from_value(o).map_err(typed)?),
        "NetworkMapping" => ColdsiteObject::NetworkMapping(serde_json::from_value(o).map_err(typed)?),
        "ProtectedVM" => ColdsiteObject::ProtectedVM(serde_json::from_value(o).map_err(typed)?),
        "RecoveryPlan" => ColdsiteObject::RecoveryPlan(serde_json::from_value(o).map_err(typed)?),
        "RecoveryRun" => ColdsiteObject::RecoveryRun(serde_json::from_value(o).map_err(typed)?),
        other => {
            return Err(Violation::new(
                describe(object),
                format!("{other} is not a coldsite kind"),
            ));
        }
    })
}

/// `Kind namespace/name`, for messages.
pub fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn kind_key(object: &Value) -> String {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    format!("{api_version}/{kind}")
}

/// Turns what the apiserver enforces beyond JSON Schema into JSON Schema: unknown fields are
/// refused where the schema lists properties (kubectl asks for strict field validation), and
/// `x-kubernetes-list-type: set` items are unique.
fn make_strict(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    if map.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
        map.insert("uniqueItems".into(), Value::Bool(true));
    }
    let preserves = map
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if map.contains_key("properties") && !preserves && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, child) in map.iter_mut() {
        match key.as_str() {
            "properties" => {
                if let Some(props) = child.as_object_mut() {
                    props.values_mut().for_each(make_strict);
                }
            }
            "items" | "additionalProperties" => make_strict(child),
            "allOf" | "anyOf" | "oneOf" => {
                if let Some(list) = child.as_array_mut() {
                    list.iter_mut().for_each(make_strict);
                }
            }
            _ => {}
        }
    }
}

/// A JSON pointer as the apiserver prints a field: `/spec/groups/0/name` → `spec.groups[0].name`.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    if out.is_empty() { "<root>".into() } else { out }
}

fn structural_violations(validator: &jsonschema::Validator, object: &Value) -> Vec<Violation> {
    validator
        .iter_errors(object)
        .map(|e| {
            let field = field_path(e.instance_path().as_str());
            let value = e.instance();
            let message = match e.kind() {
                ValidationErrorKind::Enum { options } => {
                    let allowed: Vec<String> = options
                        .as_array()
                        .map(|a| a.iter().filter(|v| !v.is_null()).map(Value::to_string).collect())
                        .unwrap_or_default();
                    format!("Unsupported value: {value}: supported values: {}", allowed.join(", "))
                }
                ValidationErrorKind::Required { property } => {
                    return Violation::new(
                        format!("{field}.{}", property.as_str().unwrap_or_default()).trim_start_matches("<root>."),
                        "Required value",
                    );
                }
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let names: Vec<String> = unexpected
                        .iter()
                        .map(|u| format!("unknown field \"{}.{u}\"", field).replace("\"<root>.", "\""))
                        .collect();
                    return Violation::new(field, names.join(", "));
                }
                ValidationErrorKind::Type { kind } => {
                    let expected = match kind {
                        TypeKind::Single(t) => t.to_string(),
                        TypeKind::Multiple(set) => format!("{set:?}"),
                    };
                    format!("Invalid value: {value}: {field} in body must be of type {expected}")
                }
                ValidationErrorKind::UniqueItems => {
                    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    let dup = items.iter().enumerate().find(|(i, v)| items[..*i].contains(v));
                    return match dup {
                        Some((i, v)) => Violation::new(format!("{field}[{i}]"), format!("Duplicate value: {v}")),
                        None => Violation::new(field, "Duplicate value"),
                    };
                }
                ValidationErrorKind::MaxLength { limit } => {
                    format!("Too long: may not be more than {limit} bytes")
                }
                ValidationErrorKind::MinLength { limit } => {
                    format!("Invalid value: {value}: {field} in body should be at least {limit} chars long")
                }
                ValidationErrorKind::MaxItems { limit } => {
                    format!("Too many: must have at most {limit} items")
                }
                ValidationErrorKind::MinItems { limit } => {
                    format!("Invalid value: {field} in body should have at least {limit} items")
                }
                ValidationErrorKind::Minimum { limit } | ValidationErrorKind::ExclusiveMinimum { limit } => {
                    format!("Invalid value: {value}: {field} in body should be greater than or equal to {limit}")
                }
                ValidationErrorKind::Maximum { limit } | ValidationErrorKind::ExclusiveMaximum { limit } => {
                    format!("Invalid value: {value}: {field} in body should be less than or equal to {limit}")
                }
                _ => format!("Invalid value: {value}: {e}"),
            };
            Violation::new(field, message)
        })
        .collect()
}

fn cel_violation(e: &kube::core::cel::ValidationError) -> Violation {
    let prefix = match e.reason.as_deref() {
        Some("FieldValueForbidden") => "Forbidden",
        Some("FieldValueRequired") => "Required value",
        Some("FieldValueDuplicate") => "Duplicate value",
        _ => "Invalid value",
    };
    let message = match e.kind {
        // The apiserver reports a rule with reason FieldValueDuplicate as a bare
        // `Duplicate value`, dropping the rule's message: say what it would say.
        CelErrorKind::ValidationFailure if prefix == "Duplicate value" => prefix.to_owned(),
        CelErrorKind::ValidationFailure => format!("{prefix}: {}", e.message),
        _ => format!("rule could not be evaluated ({}): {}", e.rule, e.message),
    };
    let field = if e.field_path.is_empty() {
        "<root>".to_owned()
    } else {
        e.field_path.clone()
    };
    Violation {
        rule: Some(e.rule.clone()),
        ..Violation::new(field, message)
    }
}

impl fmt::Display for ColdsiteObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            Ok(v) => f.write_str(&describe(&v)),
            Err(_) => f.write_str("coldsite object"),
        }
    }
}
