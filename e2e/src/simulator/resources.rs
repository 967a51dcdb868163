//! The API kinds the simulator plays, with their real group, version, kind and plural.

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};

/// One custom resource kind of KubeVirt, VolSync or external-snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Kind {
    /// `group/version`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The [`ApiResource`] for [`DynamicObject`] APIs.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(self.group, self.version, self.kind), self.plural)
    }

    /// The API of this kind in one namespace.
    pub fn namespaced(&self, client: Client, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client, namespace, &self.api_resource())
    }

    /// The API of this kind across all namespaces (or of a cluster-scoped kind).
    pub fn all(&self, client: Client) -> Api<DynamicObject> {
        Api::all_with(client, &self.api_resource())
    }

    /// A new, empty object of this kind.
    pub fn object(&self, name: &str) -> DynamicObject {
        DynamicObject::new(name, &self.api_resource())
    }
}

/// KubeVirt `kubevirt.io/v1` VirtualMachine.
pub const VIRTUAL_MACHINE: Kind = Kind {
    group: "kubevirt.io",
    version: "v1",
    kind: "VirtualMachine",
    plural: "virtualmachines",
    namespaced: true,
};

/// KubeVirt `kubevirt.io/v1` VirtualMachineInstance.
pub const VIRTUAL_MACHINE_INSTANCE: Kind = Kind {
    group: "kubevirt.io",
    version: "v1",
    kind: "VirtualMachineInstance",
    plural: "virtualmachineinstances",
    namespaced: true,
};

/// VolSync `volsync.backube/v1alpha1` ReplicationSource.
pub const REPLICATION_SOURCE: Kind = Kind {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationSource",
    plural: "replicationsources",
    namespaced: true,
};

/// VolSync `volsync.backube/v1alpha1` ReplicationDestination.
pub const REPLICATION_DESTINATION: Kind = Kind {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationDestination",
    plural: "replicationdestinations",
    namespaced: true,
};

/// external-snapshotter `snapshot.storage.k8s.io/v1` VolumeSnapshot.
pub const VOLUME_SNAPSHOT: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshot",
    plural: "volumesnapshots",
    namespaced: true,
};

/// external-snapshotter `snapshot.storage.k8s.io/v1` VolumeSnapshotClass (cluster-scoped).
pub const VOLUME_SNAPSHOT_CLASS: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshotClass",
    plural: "volumesnapshotclasses",
    namespaced: false,
};

/// external-snapshotter `snapshot.storage.k8s.io/v1` VolumeSnapshotContent (cluster-scoped).
pub const VOLUME_SNAPSHOT_CONTENT: Kind = Kind {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshotContent",
    plural: "volumesnapshotcontents",
    namespaced: false,
};

/// external-snapshotter `groupsnapshot.storage.k8s.io/v1beta2` VolumeGroupSnapshot.
pub const VOLUME_GROUP_SNAPSHOT: Kind = Kind {
    group: "groupsnapshot.storage.k8s.io",
    version: "v1beta2",
    kind: "VolumeGroupSnapshot",
    plural: "volumegroupsnapshots",
    namespaced: true,
};

/// external-snapshotter `groupsnapshot.storage.k8s.io/v1beta2` VolumeGroupSnapshotContent
/// (cluster-scoped).
pub const VOLUME_GROUP_SNAPSHOT_CONTENT: Kind = Kind {
    group: "groupsnapshot.storage.k8s.io",
    version: "v1beta2",
    kind: "VolumeGroupSnapshotContent",
    plural: "volumegroupsnapshotcontents",
    namespaced: false,
};
