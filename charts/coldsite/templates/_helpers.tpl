{{/* The chart's name, shortened to a DNS label. */}}
{{- define "coldsite.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: object names start with it. */}}
{{- define "coldsite.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "coldsite.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coldsite.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coldsite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "coldsite.labels" -}}
helm.sh/chart: {{ include "coldsite.chart" . }}
app.kubernetes.io/name: {{ include "coldsite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coldsite
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "coldsite.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coldsite.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The site identity's ServiceAccount. */}}
{{- define "coldsite.siteServiceAccountName" -}}
{{- default (printf "%s-site" (include "coldsite.fullname" .) | trunc 63 | trimSuffix "-") .Values.siteAccess.serviceAccountName }}
{{- end }}

{{/* Where the Sites' kubeconfig Secrets live. */}}
{{- define "coldsite.kubeconfigNamespace" -}}
{{- default .Release.Namespace .Values.rbac.kubeconfigSecrets.namespace }}
{{- end }}

{{- define "coldsite.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What coldsite-controller does at a site, and so what a site's identity must be allowed.
The same rules serve the site clusters (siteAccess) and the management cluster when it is
a site itself (managementIsSite). Each rule names the code path that needs it; RBAC.md
has the table. Namespaces of protected VMs and test namespaces are arbitrary, and cleanup
after a test failover lists by label across all namespaces, so these are cluster-wide.
*/}}
{{- define "coldsite.siteRules" -}}
# VirtualMachines: read the source VM (inventory, manifest copy), create the recovered VM,
# set spec.runStrategy (power off/on: merge patch), delete test copies; list by label for
# cleanup; list and watch to keep the cache plans and runs read their VMs from.
- apiGroups: ["kubevirt.io"]
  resources: ["virtualmachines"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# VirtualMachineInstances: is a VM still running, is its guest agent connected. Read only.
- apiGroups: ["kubevirt.io"]
  resources: ["virtualmachineinstances"]
  verbs: ["get"]
# virt-api's freeze and unfreeze: the guest's filesystems are frozen while the source
# snapshots of an application-consistent point are cut (appConsistentInterval).
- apiGroups: ["subresources.kubevirt.io"]
  resources: ["virtualmachineinstances/freeze", "virtualmachineinstances/unfreeze"]
  verbs: ["update"]
# VolSync: replication is server-side applied (patch, and create when absent), final syncs
# set a manual trigger (patch), reverse replication and unprotect delete them. coldsite's
# are watched (by its labels), so steady reconciles read them from a cache.
- apiGroups: ["volsync.backube"]
  resources: ["replicationsources", "replicationdestinations"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# VolumeSnapshots are the recovery points: watched by coldsite's labels (the cache steady
# reconciles read), listed by label, adopted (labels and annotations by merge patch),
# copied into test namespaces (create), pruned by retention, commit and cleanup (delete).
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshots"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# VolumeSnapshotContents (cluster-scoped): a test failover restores in the test namespace
# from a pre-provisioned copy of the point's content; cleanup deletes it.
- apiGroups: ["snapshot.storage.k8s.io"]
  resources: ["volumesnapshotcontents"]
  verbs: ["get", "list", "create", "delete"]
# VolumeGroupSnapshots: where the Site names a volumeGroupSnapshotClassName, each round of
# a multi-disk VM cuts its disks at one instant (create), waits for it (get), records the
# freeze on it (patch), and deletes it after; unprotect lists its own by label.
- apiGroups: ["groupsnapshot.storage.k8s.io"]
  resources: ["volumegroupsnapshots"]
  verbs: ["get", "list", "create", "patch", "delete"]
# PVCs: read the source disks' size, restore disks from snapshots, delete test disks;
# watch the disks coldsite restored (by its labels): is a VM's disk a copy it made. A
# multi-disk VM's claims are labelled for its group snapshot (patch), and each disk's cut is
# restored into a claim VolSync copies, deleted after the round.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Secrets: the rsync-TLS key coldsite creates for each VM's replication, derived from a
# master key on the management cluster, so the same at both ends without reading either;
# deleted by name when the VM is unprotected. coldsite never reads, lists or updates a
# Secret at a site.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
# ConfigMaps: the copy of each VM's manifest at the recovery site (server-side apply, and
# watched for plans and runs), the context of script Jobs (create); deleted on cleanup and
# unprotect.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Jobs: plan scripts with `site: primary|recovery`; read for completion, deleted on cleanup.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "create", "delete"]
# Services: the Services VolSync makes (its label app.kubernetes.io/created-by=volsync) are
# watched, to explain a replication destination that has no address yet (a LoadBalancer
# Service without a load balancer) without a read per look; read directly while the watch
# has not listed them.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
# Pods: never created. A script Job's pod is put through the site's admission as a dry run
# (dryRun=All) first, so that Pod Security's refusal reaches the run. Jobs already let
# coldsite start pods, so this grants no more than they do.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create"]
# ServiceAccounts: coldsite-script, which script Jobs run as, made in coldsite's scripts
# namespaces (create; get after AlreadyExists). coldsite binds it to nothing.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
# Namespaces: the VM's namespace at the recovery site, the test namespaces
# (coldsite-test-<management namespace>, or the Site's shared testNamespace) and the
# scripts namespaces (coldsite-scripts-<management namespace>, labelled to enforce the
# Site's Pod Security profile) are created when missing (create; get after AlreadyExists),
# and read to check what an existing scripts namespace enforces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "create"]
{{- end }}
