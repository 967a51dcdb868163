//! Benchmark: what coldsite-controller's caches hold per protected VM, by kind, and what
//! that comes to at 10,000 VMs against issue 14's 256 MiB. The objects are the ones a
//! 100-VM `coldsite-scale` run wrote (`fixtures/`, one of each kind, copied under new
//! names); the caches are the controller's own: a site's [`SiteWatch`] filled from them
//! instead of from a site, and the ProtectedVM store as the controller keeps it (no
//! managedFields). A counting allocator gives the bytes each holds, against a baseline from
//! the same run: the JSON text of the same objects, as the API server sends them.
//!
//! The count of recovery points per disk (VolumeSnapshots at the recovery site, and the
//! points a ProtectedVM's status lists) follows the replication policy: the scale bench's
//! (RPO 24h, retention 48h) and coldsite's default (RPO 15m, retention 24h).
//!
//! `cargo bench -p coldsite-operator --bench cache_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use coldsite_api::ProtectedVM;
use coldsite_api::protected_vm::LISTED_POINTS;
use coldsite_operator::kubevirt::objects::{DISK, POINT, PROTECTED_VM};
use coldsite_operator::site_watch::{SiteWatch, Source};
use kube::Resource;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::Value;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// VMs whose objects each kind is measured with: under `cargo bench`, else (`cargo test`
/// runs it once, as a check that it works) a few.
fn vms() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        2_000
    } else {
        20
    }
}

/// What issue 14 sets: the controller under 256 MiB at 10,000 ProtectedVMs.
const TARGET_VMS: usize = 10_000;
const TARGET_MIB: f64 = 256.0;

/// One cached kind: where, the object a scale run wrote, and how many each VM has.
struct Cached {
    site: &'static str,
    plural: &'static str,
    fixture: &'static str,
    /// Whether there is one per recovery point rather than one per VM.
    per_point: bool,
}

const CACHED: [Cached; 9] = [
    Cached::one(
        "hq",
        "virtualmachines",
        include_str!("fixtures/hq-virtualmachines.json"),
    ),
    Cached::one(
        "hq",
        "persistentvolumeclaims",
        include_str!("fixtures/hq-persistentvolumeclaims.json"),
    ),
    Cached::one(
        "hq",
        "replicationsources",
        include_str!("fixtures/hq-replicationsources.json"),
    ),
    Cached::one(
        "dr",
        "persistentvolumeclaims",
        include_str!("fixtures/dr-persistentvolumeclaims.json"),
    ),
    Cached::one("dr", "configmaps", include_str!("fixtures/dr-configmaps.json")),
    Cached::one(
        "dr",
        "replicationdestinations",
        include_str!("fixtures/dr-replicationdestinations.json"),
    ),
    Cached {
        per_point: true,
        ..Cached::one(
            "dr",
            "volumesnapshots",
            include_str!("fixtures/dr-volumesnapshots.json"),
        )
    },
    // A destination's Service as VolSync makes it behind a load balancer (the scale run's,
    // which ran ClusterIP, with the fields a LoadBalancer Service adds).
    Cached::one("dr", "services", include_str!("fixtures/dr-services.json")),
    Cached::one("mgmt", "protectedvms", include_str!("fixtures/mgmt-protectedvms.json")),
];

impl Cached {
    const fn one(site: &'static str, plural: &'static str, fixture: &'static str) -> Self {
        Self {
            site,
            plural,
            fixture,
            per_point: false,
        }
    }
}

/// A replication policy, by the recovery points it keeps per disk.
struct Policy {
    name: &'static str,
    points: usize,
}

const POLICIES: [Policy; 2] = [
    // Points within retention, and the newest past it (never pruned).
    Policy {
        name: "RPO 24h, retention 48h (the scale bench's)",
        points: 48 / 24 + 1,
    },
    Policy {
        name: "RPO 15m, retention 24h (coldsite's default)",
        points: 24 * 4 + 1,
    },
];

/// The objects of `vms` VMs made from `fixture`, `per_vm` each, as JSON text: each VM's
/// under names and labels of its own, each of a VM's at a time of its own (15 minutes
/// apart, as points are). A ProtectedVM lists `points` recovery points in its status.
fn copies(fixture: &str, vms: usize, per_vm: usize, points: usize) -> Vec<String> {
    let mut object: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    let name = object["metadata"]["name"].as_str().unwrap_or("object").to_owned();
    if let Some(listed) = object.pointer_mut("/status/recoveryPoints/points") {
        let point = listed[0].clone();
        *listed = Value::Array(vec![point; points.min(LISTED_POINTS)]);
    }
    let start = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").expect("a time");
    let mut texts = Vec::with_capacity(vms * per_vm);
    for vm in 0..vms {
        for k in 0..per_vm {
            let meta = &mut object["metadata"];
            meta["name"] = Value::String(format!("{name}-{vm:06}-{k:03}"));
            meta["uid"] = Value::String(format!("00000000-0000-0000-{vm:04}-{k:012}"));
            if let Some(labels) = meta["labels"].as_object_mut() {
                labels.insert(PROTECTED_VM.into(), format!("vm{vm:06}").into());
                labels.entry(DISK).and_modify(|d| *d = format!("vm{vm:06}-disk").into());
            }
            if let Some(time) = meta.pointer_mut(&format!("/annotations/{}", POINT.replace('/', "~1"))) {
                let at = start + chrono::Duration::minutes(15 * k as i64);
                *time = at.to_rfc3339().into();
                // A point's snapshot named as VolSync names it: its destination, then the time.
                let stamp = at.format("%Y%m%d%H%M%S");
                meta["name"] = Value::String(format!("volsync-coldsite-vm{vm:06}-disk-dst-{stamp}"));
            }
            texts.push(object.to_string());
        }
    }
    texts
}

/// The change in live bytes as the site's caches take `texts`, beyond what they hold empty.
fn held_by_site_watch(runtime: &tokio::runtime::Runtime, plural: &'static str, texts: Vec<String>) -> isize {
    let fill = |given: HashMap<&'static str, Vec<String>>| {
        let before = live();
        let (changes, _) = tokio::sync::broadcast::channel(1);
        let watch = runtime.block_on(async {
            let watch = SiteWatch::start("site", Source::Given(given), changes);
            while !watch.listed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The fill's tasks end with their lists.
            tokio::time::sleep(Duration::from_millis(50)).await;
            watch
        });
        let held = live() - before;
        drop(watch);
        held
    };
    let empty = fill(HashMap::new());
    fill(HashMap::from([(plural, texts)])) - empty
}

/// The change in live bytes as the controller's ProtectedVM store takes `texts`.
fn held_by_protected_vms(texts: Vec<String>) -> isize {
    let before = live();
    let (reader, mut writer) = reflector::store::<ProtectedVM>();
    for text in texts {
        let mut pvm: ProtectedVM = serde_json::from_str(&text).expect("a ProtectedVM");
        pvm.meta_mut().managed_fields = None;
        writer.apply_watcher_event(&Event::Apply(pvm));
    }
    let held = live() - before;
    drop((reader, writer));
    held
}

/// Bytes per object of one kind: held by its cache, and as JSON text.
struct Figure {
    json: f64,
    held: f64,
}

fn measure(runtime: &tokio::runtime::Runtime, cached: &Cached, vms: usize, points: usize) -> Figure {
    let per_vm = if cached.per_point { points } else { 1 };
    let texts = copies(cached.fixture, vms, per_vm, points);
    let objects = texts.len() as f64;
    let json = texts.iter().map(String::len).sum::<usize>() as f64 / objects;
    // The texts are consumed as they are taken: their bytes leave the count.
    let texts_bytes = texts.iter().map(String::capacity).sum::<usize>() + texts.capacity() * size_of::<String>();
    let held = texts_bytes as isize
        + match cached.plural {
            "protectedvms" => held_by_protected_vms(texts),
            plural => held_by_site_watch(runtime, plural, texts),
        };
    Figure {
        json,
        held: held as f64 / objects,
    }
}

/// The time to read one disk's points (as each look does) among the points of `vms` VMs.
fn point_lookup(runtime: &tokio::runtime::Runtime, vms: usize, points: usize) -> Duration {
    const LOOKUPS: usize = 20_000;
    let texts = copies(CACHED[6].fixture, vms, points, points);
    let (changes, _) = tokio::sync::broadcast::channel(1);
    let given = HashMap::from([("volumesnapshots", texts)]);
    let watch = runtime.block_on(async {
        let watch = SiteWatch::start("site", Source::Given(given), changes);
        while !watch.listed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watch
    });
    let started = Instant::now();
    let mut found = 0;
    for i in 0..LOOKUPS {
        let vm = i * 7919 % vms;
        let disk = format!("vm{vm:06}-disk");
        found += watch
            .points("scale", &format!("vm{vm:06}"), &disk)
            .map_or(0, |p| p.len());
    }
    assert_eq!(found, LOOKUPS * points, "every disk's points are found");
    started.elapsed() / LOOKUPS as u32
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let vms = vms();
    println!("coldsite-controller's caches per protected VM (one disk), measured at {vms} VMs' objects");
    for policy in &POLICIES {
        println!("\n{}: {} points per disk", policy.name, policy.points);
        println!(
            "{:<5} {:<24} {:>7} {:>10} {:>10} {:>9} {:>10}",
            "site", "kind", "per VM", "JSON B", "held B", "held/JSON", "KiB per VM"
        );
        let mut per_vm = (0.0, 0.0);
        for cached in &CACHED {
            let figure = measure(&runtime, cached, vms, policy.points);
            let count = if cached.per_point { policy.points } else { 1 };
            per_vm.0 += figure.json * count as f64;
            per_vm.1 += figure.held * count as f64;
            println!(
                "{:<5} {:<24} {:>7} {:>10.0} {:>10.0} {:>8.2}× {:>10.1}",
                cached.site,
                cached.plural,
                count,
                figure.json,
                figure.held,
                figure.held / figure.json,
                figure.held * count as f64 / 1024.0
            );
        }
        let at_target = per_vm.1 * TARGET_VMS as f64 / (1024.0 * 1024.0);
        println!(
            "per VM: {:.1} KiB held, {:.2}× its JSON; at {TARGET_VMS} VMs {at_target:.0} MiB = {:.2}× the {TARGET_MIB} MiB target (caches only)",
            per_vm.1 / 1024.0,
            per_vm.1 / per_vm.0,
            at_target / TARGET_MIB
        );
    }
    let points = POLICIES[1].points;
    let (small, large) = (
        point_lookup(&runtime, vms / 10, points),
        point_lookup(&runtime, vms, points),
    );
    println!(
        "\nreading a disk's {points} points: {:.1} µs among {} VMs' points, {:.1} µs among {vms} VMs' ({:.2}×)",
        small.as_secs_f64() * 1e6,
        vms / 10,
        large.as_secs_f64() * 1e6,
        large.as_secs_f64() / small.as_secs_f64()
    );
}
