//! Faults the simulator injects, changeable while it runs through
//! [`SimulatorHandle::faults`](super::SimulatorHandle::faults).
//!
//! A whole site outage is not a fault here: stop that site's API server (the e2e
//! harness has `ControlPlane::stop`); the simulator logs and keeps retrying.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Faults at one site. Keys name objects either as `name` (any namespace) or as
/// `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFaults {
    /// VirtualMachines that take this long (instead of `SimConfig::boot_delay`) from
    /// VMI creation to Running and Ready.
    pub slow_boot: BTreeMap<String, Duration>,
    /// VirtualMachines that never boot: the VMI stays in phase `Scheduling` with
    /// `PodScheduled=False` (reason `Unschedulable`), the VM shows `printableStatus:
    /// ErrorUnschedulable`, `ready: false` and `Ready=False`.
    pub boot_failure: BTreeSet<String>,
    /// VirtualMachines whose guest agent never connects: Running and Ready, but no
    /// `AgentConnected` condition and no guest IPs or interface names in
    /// `status.interfaces` (only what the domain knows: name and MAC).
    pub no_agent: BTreeSet<String>,
    /// ReplicationSources (`namespace/name` or `name`) whose mover is stuck: VolSync starts
    /// a sync (`lastSyncStartTime`, `Synchronizing=True`), but the source's mover never
    /// connects, so the sync never completes.
    pub stalled: BTreeSet<String>,
    /// How long this site's snapshots take from their handle to `readyToUse`, instead of
    /// `SimConfig::snapshot_ready_delay`.
    pub slow_snapshots: Option<Duration>,
    /// How long this site's destination movers take to exit after a transfer, instead of
    /// `SimConfig::mover_exit_delay`: VolSync's destination then finishes its sync late.
    pub slow_mover_exit: Option<Duration>,
    /// Claims (`namespace/name` or `name`) whose snapshots the backend queues: each is cut
    /// this long after its VolumeSnapshotContent appears, with the data the disk holds then.
    /// A group snapshot still cuts all its members at one instant.
    pub queued_snapshots: BTreeMap<String, Duration>,
}

/// All injected faults: those for every site, and those for one site by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Faults that apply at every site.
    pub all_sites: SiteFaults,
    /// Faults that apply at the named site only.
    pub sites: BTreeMap<String, SiteFaults>,
}

fn matches(keys: &BTreeSet<String>, namespace: &str, name: &str) -> bool {
    keys.contains(name) || keys.contains(&format!("{namespace}/{name}"))
}

fn lookup<'a, V>(map: &'a BTreeMap<String, V>, namespace: &str, name: &str) -> Option<&'a V> {
    map.get(&format!("{namespace}/{name}")).or_else(|| map.get(name))
}

impl Faults {
    /// The faults of one site, created empty if needed.
    pub fn site(&mut self, site: &str) -> &mut SiteFaults {
        self.sites.entry(site.to_owned()).or_default()
    }

    fn scopes<'a>(&'a self, site: &str) -> impl Iterator<Item = &'a SiteFaults> {
        std::iter::once(&self.all_sites).chain(self.sites.get(site))
    }

    /// The boot delay override of a VM, if any (the site's wins over all sites').
    pub fn slow_boot(&self, site: &str, namespace: &str, name: &str) -> Option<Duration> {
        self.sites
            .get(site)
            .and_then(|f| lookup(&f.slow_boot, namespace, name))
            .or_else(|| lookup(&self.all_sites.slow_boot, namespace, name))
            .copied()
    }

    pub fn boot_failure(&self, site: &str, namespace: &str, name: &str) -> bool {
        self.scopes(site).any(|f| matches(&f.boot_failure, namespace, name))
    }

    pub fn no_agent(&self, site: &str, namespace: &str, name: &str) -> bool {
        self.scopes(site).any(|f| matches(&f.no_agent, namespace, name))
    }

    pub fn stalled(&self, site: &str, namespace: &str, name: &str) -> bool {
        self.scopes(site).any(|f| matches(&f.stalled, namespace, name))
    }

    pub fn slow_snapshots(&self, site: &str) -> Option<Duration> {
        self.sites
            .get(site)
            .and_then(|f| f.slow_snapshots)
            .or(self.all_sites.slow_snapshots)
    }

    /// How long a claim's snapshots wait in the backend's queue, if at all.
    pub fn queued_snapshots(&self, site: &str, namespace: &str, name: &str) -> Option<Duration> {
        self.sites
            .get(site)
            .and_then(|f| lookup(&f.queued_snapshots, namespace, name))
            .or_else(|| lookup(&self.all_sites.queued_snapshots, namespace, name))
            .copied()
    }

    pub fn slow_mover_exit(&self, site: &str) -> Option<Duration> {
        self.sites
            .get(site)
            .and_then(|f| f.slow_mover_exit)
            .or(self.all_sites.slow_mover_exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_by_name_or_namespaced_and_by_site() {
        let mut faults = Faults::default();
        faults.site("recovery").boot_failure.insert("dc01".into());
        faults.all_sites.stalled.insert("ns1/rs".into());
        faults.all_sites.slow_boot.insert("vm".into(), Duration::from_secs(1));
        faults
            .site("primary")
            .slow_boot
            .insert("ns/vm".into(), Duration::from_secs(5));
        assert!(faults.boot_failure("recovery", "any", "dc01"));
        assert!(!faults.boot_failure("primary", "any", "dc01"));
        assert!(faults.stalled("primary", "ns1", "rs"));
        assert!(!faults.stalled("primary", "ns2", "rs"));
        assert_eq!(faults.slow_boot("primary", "ns", "vm"), Some(Duration::from_secs(5)));
        assert_eq!(faults.slow_boot("recovery", "ns", "vm"), Some(Duration::from_secs(1)));
        assert_eq!(faults.slow_boot("recovery", "ns", "other"), None);
    }
}
