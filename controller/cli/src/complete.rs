//! Tab completion inside `kubectl coldsite …`. kubectl (1.26 and later) completes a plugin's
//! arguments by running `kubectl_complete-<plugin>` with the words typed so far, the last
//! being the one to complete, and reads cobra's answer: one candidate per line (a tab,
//! then a description, optional) and a last line `:<directive>`. That helper runs
//! `kubectl-coldsite __complete …`, answered here: subcommands and flags from the clap
//! definition, and names from the cluster — runs, plans, Sites, the manual actions of a
//! run's plan, namespaces and kubeconfig contexts.

use clap::Command;
use coldsite_api::recovery_run::RunPhase;
use coldsite_api::{ProtectedVM, RecoveryPlan, RecoveryRun, Site};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::cluster::ClusterArgs;
use crate::view::manual_actions;

/// Cobra's directives: complete only from the candidates, or let the shell complete files.
const NO_FILES: u8 = 4;
const FILES: u8 = 0;

/// What the words typed so far say.
#[derive(Debug, Default)]
struct Typed {
    subcommand: Option<String>,
    /// Positional arguments after the subcommand, before the word being completed.
    positionals: Vec<String>,
    /// The flag whose value is being completed.
    value_of: Option<String>,
    cluster: ClusterArgs,
}

/// The long name of a flag, given `--name`, `--name=…` or a short `-x`.
fn flag_id(cmd: &Command, word: &str) -> Option<(String, bool)> {
    let arg = if let Some(long) = word.strip_prefix("--") {
        let long = long.split('=').next().unwrap_or(long);
        cmd.get_arguments().find(|a| a.get_long() == Some(long))
    } else {
        let short = word.strip_prefix('-')?.chars().next()?;
        cmd.get_arguments().find(|a| a.get_short() == Some(short))
    }?;
    Some((arg.get_id().to_string(), arg.get_action().takes_values()))
}

fn parse(root: &Command, words: &[String]) -> Typed {
    let mut t = Typed::default();
    let mut expecting: Option<String> = None;
    for w in words {
        let cmd = t
            .subcommand
            .as_deref()
            .and_then(|s| root.find_subcommand(s))
            .unwrap_or(root);
        if let Some(id) = expecting.take() {
            set_cluster_option(&mut t.cluster, &id, w);
            continue;
        }
        if w.starts_with('-') && w.len() > 1 {
            if let Some((id, takes_value)) = flag_id(cmd, w) {
                match w.split_once('=') {
                    Some((_, value)) => set_cluster_option(&mut t.cluster, &id, value),
                    None if takes_value => expecting = Some(id),
                    None => {}
                }
            }
        } else if t.subcommand.is_none() {
            t.subcommand = Some(w.clone());
        } else {
            t.positionals.push(w.clone());
        }
    }
    t.value_of = expecting;
    t
}

fn set_cluster_option(c: &mut ClusterArgs, id: &str, value: &str) {
    let v = Some(value.to_owned());
    match id {
        "namespace" => c.namespace = v,
        "context" => c.context = v,
        "kubeconfig" => c.kubeconfig = v.map(Into::into),
        "cluster" => c.cluster = v,
        "user" => c.user = v,
        _ => {}
    }
}

/// Candidates for `current`, and the directive.
async fn candidates(root: &Command, words: &[String]) -> (Vec<String>, u8) {
    let (current, before) = match words.split_last() {
        Some((last, rest)) => (last.as_str(), rest),
        None => ("", words),
    };
    let t = parse(root, before);
    let cmd = t
        .subcommand
        .as_deref()
        .and_then(|s| root.find_subcommand(s))
        .unwrap_or(root);
    if let Some(id) = &t.value_of {
        return value_candidates(cmd, id, &t).await;
    }
    if current.starts_with('-') {
        let flags = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| Some(format!("--{}\t{}", a.get_long()?, first_line(a.get_help()))))
            .collect();
        return (flags, NO_FILES);
    }
    let Some(sub) = t.subcommand.as_deref() else {
        let subs = root
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("{}\t{}", s.get_name(), first_line(s.get_about())))
            .collect();
        return (subs, NO_FILES);
    };
    let names = match (sub, t.positionals.len()) {
        ("validate" | "simulate", _) => return (Vec::new(), FILES),
        ("completion", 0) => ["bash", "zsh", "fish", "elvish", "powershell"]
            .map(String::from)
            .to_vec(),
        ("status", 0) => {
            let mut n = runs(&t, false).await;
            n.extend(plans(&t).await);
            n
        }
        ("points", 0) => {
            let mut n = plans(&t).await;
            n.extend(protected_vms(&t).await);
            n
        }
        ("approve", 0) => runs(&t, true).await,
        ("approve", 1) => actions_of_run(&t, &t.positionals[0]).await,
        ("cleanup" | "report", 0) => runs(&t, false).await,
        ("test" | "failover" | "repoint" | "planned" | "commit" | "reprotect" | "failback", 0) => plans(&t).await,
        ("link", 0) => sites(&t).await,
        _ => Vec::new(),
    };
    (names, NO_FILES)
}

async fn value_candidates(cmd: &Command, id: &str, t: &Typed) -> (Vec<String>, u8) {
    let arg = cmd.get_arguments().find(|a| a.get_id() == id);
    let possible: Vec<String> = arg
        .map(|a| {
            a.get_possible_values()
                .iter()
                .map(|v| v.get_name().to_owned())
                .collect()
        })
        .unwrap_or_default();
    if !possible.is_empty() {
        return (possible, NO_FILES);
    }
    match id {
        "namespace" => (namespaces(t).await, NO_FILES),
        "context" | "site_context" => (contexts(t), NO_FILES),
        "approvals" => {
            let plan = t.positionals.first().cloned().unwrap_or_default();
            (actions_of_plan(t, &plan).await, NO_FILES)
        }
        "kubeconfig" | "output" => (Vec::new(), FILES),
        _ => (Vec::new(), NO_FILES),
    }
}

fn first_line(help: Option<&clap::builder::StyledStr>) -> String {
    help.map(|h| h.to_string().lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

async fn client(t: &Typed) -> Option<crate::cluster::Cluster> {
    t.cluster.connect().await.ok()
}

async fn runs(t: &Typed, unfinished_only: bool) -> Vec<String> {
    let Some(c) = client(t).await else { return Vec::new() };
    let list = Api::<RecoveryRun>::namespaced(c.client, &c.namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|r| {
            !unfinished_only
                || !r
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(RunPhase::is_finished)
        })
        .map(|r| {
            let phase = r.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
            format!("{}\t{:?} of {}, {phase:?}", r.name_any(), r.spec.action, r.spec.plan)
        })
        .collect()
}

async fn plans(t: &Typed) -> Vec<String> {
    let sites = |p: &RecoveryPlan| format!("{} → {}", p.spec.primary_site, p.spec.recovery_site);
    named(t, "RecoveryPlan", sites).await
}

async fn protected_vms(t: &Typed) -> Vec<String> {
    let sites = |p: &ProtectedVM| format!("{} → {}", p.spec.primary_site, p.spec.recovery_site);
    named(t, "ProtectedVM", sites).await
}

/// The namespace's objects of a kind, each with its kind and `describe` as the hint.
async fn named<K>(t: &Typed, kind: &str, describe: impl Fn(&K) -> String) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Some(c) = client(t).await else { return Vec::new() };
    Api::<K>::namespaced(c.client, &c.namespace)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|o| format!("{}\t{kind} {}", o.name_any(), describe(o)))
                .collect()
        })
        .unwrap_or_default()
}

async fn sites(t: &Typed) -> Vec<String> {
    let Some(c) = client(t).await else { return Vec::new() };
    Api::<Site>::all(c.client)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().map(|s| s.name_any()).collect())
        .unwrap_or_default()
}

async fn namespaces(t: &Typed) -> Vec<String> {
    let Some(c) = client(t).await else { return Vec::new() };
    Api::<Namespace>::all(c.client)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().map(|n| n.name_any()).collect())
        .unwrap_or_default()
}

fn contexts(t: &Typed) -> Vec<String> {
    let kc = match &t.cluster.kubeconfig {
        Some(p) => kube::config::Kubeconfig::read_from(p),
        None => kube::config::Kubeconfig::read(),
    };
    kc.map(|k| k.contexts.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

async fn actions_of_plan(t: &Typed, plan: &str) -> Vec<String> {
    let Some(c) = client(t).await else { return Vec::new() };
    let Ok(p) = Api::<RecoveryPlan>::namespaced(c.client, &c.namespace).get(plan).await else {
        return Vec::new();
    };
    manual_actions(&p)
        .into_iter()
        .map(|(group, pre, a)| format!("{}\tmanual, {} {group}", a.name, if pre { "before" } else { "after" }))
        .collect()
}

async fn actions_of_run(t: &Typed, run: &str) -> Vec<String> {
    let Some(c) = client(t).await else { return Vec::new() };
    let Ok(r) = Api::<RecoveryRun>::namespaced(c.client, &c.namespace).get(run).await else {
        return Vec::new();
    };
    actions_of_plan(t, &r.spec.plan)
        .await
        .into_iter()
        .filter(|a| {
            !r.spec
                .approvals
                .iter()
                .any(|x| a.split('\t').next() == Some(x.as_str()))
        })
        .collect()
}

/// `__complete WORDS…`: prints the candidates that start with the last word, then the
/// directive.
pub async fn run(mut root: Command, words: &[String]) {
    // Built, so that global flags such as --namespace are known to every subcommand.
    root.build();
    let current = words.last().map(String::as_str).unwrap_or_default();
    let (names, directive) = candidates(&root, words).await;
    for n in names.iter().filter(|n| n.starts_with(current)) {
        println!("{n}");
    }
    println!(":{directive}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Command {
        let mut root = <crate::Cli as clap::CommandFactory>::command();
        root.build();
        root
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_words_typed_are_understood() {
        let root = root();
        let t = parse(&root, &words("-n exchange approve exchange-test-1"));
        assert_eq!(t.subcommand.as_deref(), Some("approve"));
        assert_eq!(t.positionals, ["exchange-test-1"]);
        assert_eq!(t.cluster.namespace.as_deref(), Some("exchange"));
        let t = parse(&root, &words("test --context=dr exchange --approve"));
        assert_eq!(t.subcommand.as_deref(), Some("test"));
        assert_eq!(t.positionals, ["exchange"]);
        assert_eq!(t.cluster.context.as_deref(), Some("dr"));
        assert_eq!(t.value_of.as_deref(), Some("approvals"));
        let t = parse(&root, &words("status --watch"));
        assert_eq!((t.positionals.len(), t.value_of), (0, None), "--watch takes no value");
    }

    #[tokio::test]
    async fn subcommands_flags_and_values_come_from_the_definition() {
        let root = root();
        let (subs, d) = candidates(&root, &words("")).await;
        assert_eq!(d, NO_FILES);
        assert!(subs.iter().any(|s| s.starts_with("approve\tApprove")), "{subs:?}");
        let (flags, _) = candidates(&root, &words("failover exchange --")).await;
        assert!(
            flags.iter().any(|f| f.starts_with("--no-shutdown-source\t")),
            "{flags:?}"
        );
        let (formats, _) = candidates(&root, &words("report r --format ")).await;
        assert_eq!(formats, ["html", "markdown"]);
        assert_eq!(candidates(&root, &words("validate ")).await.1, FILES);
    }
}
