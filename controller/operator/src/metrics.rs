//! Prometheus metrics. Labels are bounded: kinds, categories, phases and step kinds are
//! enums; per-VM and per-run series exist once per object and are removed with it.

use prometheus::{CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry, TextEncoder};

use crate::error::Category;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: CounterVec,
    pub reconcile_errors: CounterVec,
    pub reconcile_seconds: HistogramVec,
    pub vm_rpo_seconds: GaugeVec,
    pub vm_rpo_target_seconds: GaugeVec,
    pub vm_replication_healthy: GaugeVec,
    pub site_reachable: GaugeVec,
    pub step_seconds: HistogramVec,
    pub run_rto_seconds: GaugeVec,
    pub runs: CounterVec,
    pub run_waiting_for_approval_seconds: GaugeVec,
    pub plan_proven_timestamp_seconds: GaugeVec,
    pub fenced: CounterVec,
    pub app_consistent_syncs: CounterVec,
    pub guest_freeze_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<CounterVec, prometheus::Error> {
            let c = CounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        Ok(Self {
            fenced: counter(
                "coldsite_fenced_vms_total",
                "Copies of VMs that coldsite found running or starting at a site they had failed over \
                 from, and halted, by site.",
                &["site"],
            )?,
            app_consistent_syncs: counter(
                "coldsite_app_consistent_syncs_total",
                "App-consistent syncs by the site the guest runs at and the point each yielded: \
                 app_consistent, crash_consistent (not every disk cut in one freeze), unfrozen (the \
                 guest could not be frozen: no guest agent, a timeout; see FreezeFailed Events).",
                &["site", "result"],
            )?,
            guest_freeze_seconds: histogram(
                "coldsite_guest_freeze_seconds",
                "How long guests stayed frozen for app-consistent points, from the freeze to \
                 coldsite's thaw, by the site the guest runs at. KubeVirt thaws a guest nobody \
                 thaws after 60 s.",
                &["site"],
                vec![0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0],
            )?,
            reconciles: counter(
                "coldsite_reconciles_total",
                "Reconciles by kind and result.",
                &["kind", "result"],
            )?,
            reconcile_errors: counter(
                "coldsite_reconcile_errors_total",
                "Failed reconciles by kind and error category.",
                &["kind", "category"],
            )?,
            reconcile_seconds: histogram(
                "coldsite_reconcile_duration_seconds",
                "How long reconciles take.",
                &["kind"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            vm_rpo_seconds: gauge(
                "coldsite_vm_rpo_seconds",
                "Seconds of data a protected VM would lose if its site failed now.",
                &["namespace", "protected_vm"],
            )?,
            vm_rpo_target_seconds: gauge(
                "coldsite_vm_rpo_target_seconds",
                "The RPO a protected VM is meant to meet.",
                &["namespace", "protected_vm"],
            )?,
            vm_replication_healthy: gauge(
                "coldsite_vm_replication_healthy",
                "1 when a protected VM's replication is healthy.",
                &["namespace", "protected_vm"],
            )?,
            site_reachable: gauge(
                "coldsite_site_reachable",
                "1 when a site's API server answers.",
                &["site"],
            )?,
            step_seconds: histogram(
                "coldsite_run_step_duration_seconds",
                "How long recovery run steps take, by kind.",
                &["kind"],
                vec![1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
            )?,
            run_rto_seconds: gauge(
                "coldsite_run_rto_seconds",
                "RTO achieved by the latest finished run of a plan.",
                &["namespace", "plan", "action"],
            )?,
            runs: counter(
                "coldsite_runs_total",
                "Finished recovery runs by action and phase.",
                &["action", "phase"],
            )?,
            run_waiting_for_approval_seconds: gauge(
                "coldsite_run_waiting_for_approval_seconds",
                "How long a run has waited for a manual approval; 0 when it is not waiting.",
                &["namespace", "run"],
            )?,
            plan_proven_timestamp_seconds: gauge(
                "coldsite_plan_proven_timestamp_seconds",
                "When a test failover of the plan last succeeded (Unix time); the plan's creation while none has.",
                &["namespace", "plan"],
            )?,
            registry,
        })
    }

    pub fn reconciled(&self, kind: &str, started: std::time::Instant, error: Option<Category>) {
        self.reconcile_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        match error {
            None => self.reconciles.with_label_values(&[kind, "ok"]).inc(),
            Some(c) => {
                self.reconciles.with_label_values(&[kind, "error"]).inc();
                self.reconcile_errors.with_label_values(&[kind, c.as_str()]).inc();
            }
        }
    }

    /// Drops an unprotected VM's series, so that no alert fires for a VM that is gone.
    pub fn forget_vm(&self, namespace: &str, protected_vm: &str) {
        let labels = [namespace, protected_vm];
        for gauge in [
            &self.vm_rpo_seconds,
            &self.vm_rpo_target_seconds,
            &self.vm_replication_healthy,
        ] {
            // Absent when it never synced: nothing to drop.
            let _ = gauge.remove_label_values(&labels);
        }
    }

    /// Drops a deleted plan's series.
    pub fn forget_plan(&self, namespace: &str, plan: &str) {
        let _ = self
            .plan_proven_timestamp_seconds
            .remove_label_values(&[namespace, plan]);
    }

    /// Drops a deleted Site's series.
    pub fn forget_site(&self, site: &str) {
        let _ = self.site_reachable.remove_label_values(&[site]);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprotected_vm_leaves_no_series() {
        let m = Metrics::new().expect("metrics");
        for vm in ["dc01", "mbx01"] {
            let labels = ["exchange", vm];
            m.vm_rpo_seconds.with_label_values(&labels).set(2000.0);
            m.vm_rpo_target_seconds.with_label_values(&labels).set(900.0);
            m.vm_replication_healthy.with_label_values(&labels).set(0.0);
        }
        m.forget_vm("exchange", "dc01");
        let text = m.render();
        assert!(!text.contains(r#"protected_vm="dc01""#), "{text}");
        assert_eq!(text.matches(r#"protected_vm="mbx01""#).count(), 3, "{text}");
    }

    #[test]
    fn a_deleted_site_leaves_no_series() {
        let m = Metrics::new().expect("metrics");
        m.site_reachable.with_label_values(&["hq"]).set(0.0);
        m.site_reachable.with_label_values(&["dr"]).set(1.0);
        m.forget_site("hq");
        let text = m.render();
        assert!(
            !text.contains(r#"site="hq""#) && text.contains(r#"site="dr""#),
            "{text}"
        );
    }
}
