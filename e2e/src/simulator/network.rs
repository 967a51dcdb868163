//! The network between sites, which a cluster without nodes does not have.
//!
//! - **A load balancer per site, in the style of MetalLB**: a Service of type
//!   `LoadBalancer` gets `status.loadBalancer.ingress[0].ip` from the site's pool. The
//!   address keeps the ClusterIP's offset in the site's Service range (read from the
//!   cluster's ServiceCIDR `kubernetes`), so simulators sharing an API server agree on it
//!   without coordinating.
//! - **Reachability**: an address that a site's load balancer gave out is reachable from
//!   every site; a ClusterIP only from its own site, or from any site when the sites share a
//!   network ([`SimConfig::shared_network`](super::SimConfig::shared_network), as with
//!   Submariner). Nothing else resolves: a name, an unknown or a foreign ClusterIP.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, Patch};
use serde_json::json;

use super::util;
use super::{Ctx, SiteState};

/// A Service that a connection reached.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub site: usize,
    pub service: Arc<Service>,
}

/// The ClusterIP range of a site, as its API server allocates.
async fn service_cidr(ctx: &Ctx, site: usize) -> Result<Option<Ipv4Net>> {
    let api: Api<ServiceCIDR> = Api::all(ctx.client(site));
    let cidr = api
        .get_opt("kubernetes")
        .await
        .context("reading ServiceCIDR kubernetes")?;
    Ok(cidr
        .and_then(|c| c.spec)
        .and_then(|s| s.cidrs)
        .into_iter()
        .flatten()
        .find_map(|c| c.parse::<Ipv4Net>().ok()))
}

/// The load-balancer address for a ClusterIP: the same offset in the pool.
pub(crate) fn lb_address(service_cidr: Ipv4Net, pool: Ipv4Net, cluster_ip: Ipv4Addr) -> Option<Ipv4Addr> {
    if !service_cidr.contains(&cluster_ip) || pool.prefix_len() > service_cidr.prefix_len() {
        return None;
    }
    let offset = u32::from(cluster_ip) - u32::from(service_cidr.network());
    Some(Ipv4Addr::from(u32::from(pool.network()) + offset))
}

pub(crate) async fn reconcile(ctx: &Ctx, site: usize, state: &SiteState) -> Result<()> {
    let services = ctx.cache(site).services.all();
    let pending: Vec<&Service> = services
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"))
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_none_or(Vec::is_empty)
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let Some(range) = service_cidr(ctx, site).await? else {
        return Ok(());
    };
    let pool = ctx.sites[site].lb_pool;
    for service in pending {
        let cluster_ip = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let Some(address) = cluster_ip.and_then(|ip| lb_address(range, pool, ip)) else {
            continue;
        };
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Service> = Api::namespaced(ctx.client(site), namespace);
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": address.to_string(), "ipMode": "VIP"}]}}});
        match api.patch_status(name, &util::params(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                tracing::info!(site = %ctx.site_name(site), "load balancer: Service {namespace}/{name} at {address}")
            }
            Err(e) => state.error(anyhow::Error::new(e).context(format!("Service {namespace}/{name}"))),
        }
    }
    Ok(())
}

/// The Service that `address` reaches from site `from`, if any.
pub(crate) fn resolve(ctx: &Ctx, from: usize, address: &str) -> Option<Endpoint> {
    let ip = address.parse::<IpAddr>().ok()?.to_string();
    for site in 0..ctx.sites.len() {
        for service in ctx.cache(site).services.all() {
            let by_lb = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|ingress| ingress.iter().any(|i| i.ip.as_deref() == Some(ip.as_str())));
            let by_cluster_ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(ip.as_str())
                && (site == from || ctx.config.shared_network);
            if by_lb || by_cluster_ip {
                return Some(Endpoint { site, service });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancer_addresses_keep_the_cluster_ip_offset() {
        let range: Ipv4Net = "10.97.0.0/16".parse().unwrap();
        let pool: Ipv4Net = "172.17.0.0/16".parse().unwrap();
        assert_eq!(
            lb_address(range, pool, "10.97.3.7".parse().unwrap()),
            Some("172.17.3.7".parse().unwrap())
        );
        assert_eq!(lb_address(range, pool, "10.98.0.1".parse().unwrap()), None);
        let small: Ipv4Net = "172.17.0.0/24".parse().unwrap();
        assert_eq!(lb_address(range, small, "10.97.0.1".parse().unwrap()), None);
    }
}
