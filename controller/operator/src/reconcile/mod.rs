//! One reconciler per kind, each in stages: dereference, validate, build, apply, status.

pub mod network_mapping;
pub mod protected_vm;
pub mod recovery_plan;
pub mod recovery_run;
pub mod site;

use std::future::Future;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event, finalizer};
use kube::{Api, Resource, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Result};

/// Runs `apply`, or `cleanup` once the object is being deleted, under `name`'s finalizer.
pub(crate) async fn finalized<K, A, AF, C, CF>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    name: &str,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Action>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<Action>>,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    finalizer(&api, name, obj, |event| async {
        match event {
            Event::Apply(o) => apply(o, ctx).await,
            Event::Cleanup(o) => cleanup(o, ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}
