//! One reconciler per kind, each in stages: dereference, validate, build, apply, status.

pub mod network_mapping;
pub mod protected_vm;
pub mod recovery_plan;
pub mod recovery_run;
pub mod site;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    let result = finalizer(&api, name, obj, |event| async {
        match event {
            Event::Apply(o) => apply(o, ctx).await,
            Event::Cleanup(o) => cleanup(o, ctx).await,
        }
    })
    .await;
    settle(result, name)
}

/// A finalizer's patch is refused (422) when its test of the finalizer list fails: the list
/// changed since the cached object this reconcile was given, most often by this controller's
/// own add that the cache has not shown yet. Not a failure: the change's watch event
/// reconciles the object again, and the requeue is only a fallback.
const STALE_FINALIZERS_RETRY: Duration = Duration::from_secs(5);

/// What a reconcile under a finalizer amounts to: the reconcile's own result, a requeue when
/// the finalizer's patch met a newer object than the cache's, or the patch's failure.
fn settle(result: Result<Action, FinalizerError<Error>>, finalizer: &str) -> Result<Action> {
    result.or_else(|e| match e {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => Err(e),
        FinalizerError::AddFinalizer(source) | FinalizerError::RemoveFinalizer(source) if stale(&source) => {
            tracing::debug!(finalizer, error = %source, "finalizers changed since the cached object; retrying");
            Ok(Action::requeue(STALE_FINALIZERS_RETRY))
        }
        FinalizerError::AddFinalizer(source) => Err(Error::Kube {
            what: format!("adding finalizer {finalizer}"),
            source,
        }),
        FinalizerError::RemoveFinalizer(source) => Err(Error::Kube {
            what: format!("removing finalizer {finalizer}"),
            source,
        }),
        other => Err(Error::Internal(other.to_string())),
    })
}

fn stale(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.is_invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, reason: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason,
            "message": "the server rejected our request due to an error in our request"
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn a_finalizer_patch_refused_for_a_stale_list_is_retried_not_failed() {
        let add = settle(Err(FinalizerError::AddFinalizer(refused(422, "Invalid"))), "f");
        assert_eq!(add.unwrap(), Action::requeue(STALE_FINALIZERS_RETRY));
        let remove = settle(Err(FinalizerError::RemoveFinalizer(refused(422, "Invalid"))), "f");
        assert_eq!(remove.unwrap(), Action::requeue(STALE_FINALIZERS_RETRY));
    }

    #[test]
    fn other_finalizer_failures_fail_the_reconcile_with_their_source() {
        let forbidden = settle(Err(FinalizerError::AddFinalizer(refused(403, "Forbidden"))), "f").unwrap_err();
        assert_eq!(forbidden.category(), crate::error::Category::Kubernetes);
        assert!(forbidden.to_string().starts_with("adding finalizer f: "), "{forbidden}");
        let source = std::error::Error::source(&forbidden).expect("the API's refusal is kept");
        assert!(source.to_string().contains("rejected"), "{source}");
        let applied = settle(Err(FinalizerError::ApplyFailed(Error::InvalidSpec("bad".into()))), "f").unwrap_err();
        assert_eq!(applied.category(), crate::error::Category::InvalidSpec);
        assert_eq!(settle(Ok(Action::await_change()), "f").unwrap(), Action::await_change());
    }
}
