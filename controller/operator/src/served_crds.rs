//! Whether the management cluster serves the CRDs this build was made with. Helm installs
//! CRDs but never upgrades them, and a controller newer than its CRDs fails at its first
//! write of a field they lack (a run would stop mid-way). So the controller does not act
//! until each served CRD carries the schema digest of its own.

use coldsite_api::SCHEMA_DIGEST;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

/// Pure: what is wrong with the served CRDs (`None` where one is not served), one line each
/// naming the CRD; empty when every one is this build's.
pub fn stale(expected: &[CustomResourceDefinition], served: &[Option<CustomResourceDefinition>]) -> Vec<String> {
    let digest = |crd: &CustomResourceDefinition| {
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCHEMA_DIGEST))
            .cloned()
    };
    expected
        .iter()
        .zip(served)
        .filter_map(|(want, have)| {
            let name = want.metadata.name.clone().unwrap_or_default();
            match have {
                None => Some(format!("{name} is not installed")),
                Some(have) if digest(have) != digest(want) => {
                    Some(format!("{name} is not the schema this controller was built with"))
                }
                Some(_) => None,
            }
        })
        .collect()
}

/// Reads the served CRDs and says what is wrong with them, as [`stale`].
pub async fn check(client: &Client) -> Result<Vec<String>, kube::Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let expected = coldsite_api::crds();
    let mut served = Vec::with_capacity(expected.len());
    for crd in &expected {
        served.push(api.get_opt(crd.metadata.name.as_deref().unwrap_or_default()).await?);
    }
    Ok(stale(&expected, &served))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_builds_crds_pass() {
        let expected = coldsite_api::crds();
        let served: Vec<_> = expected.iter().cloned().map(Some).collect();
        assert!(stale(&expected, &served).is_empty());

        // An older schema: a field this build writes is missing, the digest with it.
        let mut older = served.clone();
        let run = older[4].as_mut().unwrap();
        run.spec.versions[0].schema = None;
        let digest = coldsite_api::schema_digest(run);
        run.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(SCHEMA_DIGEST.into(), digest);
        older[1] = None;
        assert_eq!(
            stale(&expected, &older),
            [
                "networkmappings.coldsite.io is not installed",
                "recoveryruns.coldsite.io is not the schema this controller was built with",
            ]
        );

        // CRDs from before the digest existed carry none.
        let mut unmarked = served;
        unmarked[0].as_mut().unwrap().metadata.annotations = None;
        assert_eq!(stale(&expected, &unmarked).len(), 1);
    }

    #[test]
    fn the_digest_follows_the_schema() {
        let crd = &coldsite_api::crds()[2];
        let mut changed = crd.clone();
        changed.spec.versions[0].served = false;
        assert_ne!(coldsite_api::schema_digest(crd), coldsite_api::schema_digest(&changed));
        assert_eq!(
            coldsite_api::schema_digest(crd),
            coldsite_api::schema_digest(&crd.clone())
        );
    }
}
