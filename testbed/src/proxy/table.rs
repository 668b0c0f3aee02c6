//! The service proxy's routing table (pure): node ports of Services, endpoints of their
//! EndpointSlices, and the per-connection choice of an endpoint the way kube-proxy makes it.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// `namespace/name`.
pub type Key = String;

fn key(ns: Option<&String>, name: Option<&String>) -> Key {
    format!("{}/{}", ns.map_or("", |s| s), name.map_or("", |s| s))
}

/// One port of a NodePort Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePort {
    pub service: Key,
    /// The Service port's name ("" when unnamed), which EndpointSlice ports carry too.
    pub port_name: String,
}

/// One endpoint address with its port resolved, and its conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddrV4,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Debug, Clone, Default)]
struct Slice {
    service: Key,
    ports: Vec<(String, u16)>,
    endpoints: Vec<(Ipv4Addr, bool, bool, bool)>,
}

/// What the proxy currently believes (lagging the API by the propagation delay).
#[derive(Debug, Clone, Default)]
pub struct Table {
    node_ports: HashMap<Key, Vec<(u16, String)>>,
    slices: HashMap<Key, Slice>,
}

impl Table {
    pub fn apply_service(&mut self, svc: &Service) {
        let k = key(svc.metadata.namespace.as_ref(), svc.metadata.name.as_ref());
        let spec = svc.spec.as_ref();
        let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        let ports: Vec<(u16, String)> = if kind == "NodePort" || kind == "LoadBalancer" {
            spec.and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter_map(|p| {
                    let node_port = u16::try_from(p.node_port?).ok()?;
                    Some((node_port, p.name.clone().unwrap_or_default()))
                })
                .collect()
        } else {
            Vec::new()
        };
        if ports.is_empty() {
            self.node_ports.remove(&k);
        } else {
            self.node_ports.insert(k, ports);
        }
    }

    pub fn delete_service(&mut self, svc: &Service) {
        self.node_ports.remove(&key(
            svc.metadata.namespace.as_ref(),
            svc.metadata.name.as_ref(),
        ));
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let k = key(
            slice.metadata.namespace.as_ref(),
            slice.metadata.name.as_ref(),
        );
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            self.slices.remove(&k);
            return;
        };
        if slice.address_type != "IPv4" {
            self.slices.remove(&k);
            return;
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let c = e.conditions.as_ref();
                // nil ready means ready; nil serving follows ready; nil terminating means not
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                e.addresses
                    .iter()
                    .filter_map(move |a| Some((a.parse().ok()?, ready, serving, terminating)))
            })
            .collect();
        self.slices.insert(
            k,
            Slice {
                service: key(slice.metadata.namespace.as_ref(), Some(service)),
                ports,
                endpoints,
            },
        );
    }

    pub fn clear_services(&mut self) {
        self.node_ports.clear();
    }

    pub fn clear_slices(&mut self) {
        self.slices.clear();
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.slices.remove(&key(
            slice.metadata.namespace.as_ref(),
            slice.metadata.name.as_ref(),
        ));
    }

    /// Every node port and what it serves (a port claimed twice keeps the first service).
    pub fn node_ports(&self) -> BTreeMap<u16, NodePort> {
        let mut out = BTreeMap::new();
        let mut services: Vec<_> = self.node_ports.iter().collect();
        services.sort();
        for (service, ports) in services {
            for (port, name) in ports {
                out.entry(*port).or_insert_with(|| NodePort {
                    service: service.clone(),
                    port_name: name.clone(),
                });
            }
        }
        out
    }

    /// The endpoints behind a node port, from all of the service's slices, without duplicates.
    pub fn backends(&self, node_port: u16) -> Vec<Backend> {
        let Some(target) = self.node_ports().remove(&node_port) else {
            return Vec::new();
        };
        let mut out: Vec<Backend> = Vec::new();
        let mut slices: Vec<_> = self
            .slices
            .iter()
            .filter(|(_, s)| s.service == target.service)
            .collect();
        slices.sort_by(|a, b| a.0.cmp(b.0));
        for (_, slice) in slices {
            let Some((_, port)) = slice.ports.iter().find(|(n, _)| *n == target.port_name) else {
                continue;
            };
            for &(ip, ready, serving, terminating) in &slice.endpoints {
                let addr = SocketAddrV4::new(ip, *port);
                if !out.iter().any(|b| b.addr == addr) {
                    out.push(Backend {
                        addr,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
        out
    }
}

/// kube-proxy's choice for one new connection: ready endpoints; only when none is ready,
/// endpoints that are serving and terminating; `turn` spreads connections round-robin.
pub fn choose(backends: &[Backend], turn: usize) -> Option<SocketAddrV4> {
    let ready: Vec<_> = backends.iter().filter(|b| b.ready).collect();
    let pool = if ready.is_empty() {
        backends
            .iter()
            .filter(|b| b.serving && b.terminating)
            .collect()
    } else {
        ready
    };
    if pool.is_empty() {
        None
    } else {
        Some(pool[turn % pool.len()].addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(last: u8, ready: bool, serving: bool, terminating: bool) -> Backend {
        Backend {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 8080),
            ready,
            serving,
            terminating,
        }
    }

    #[test]
    fn ready_first_round_robin() {
        let backends = [
            b(1, true, true, false),
            b(2, false, true, true),
            b(3, true, true, false),
        ];
        let picks: Vec<u8> = (0..4)
            .map(|t| choose(&backends, t).unwrap().ip().octets()[3])
            .collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
    }

    #[test]
    fn terminating_serving_only_as_fallback() {
        let backends = [
            b(1, false, false, true),
            b(2, false, true, true),
            b(3, false, true, false),
        ];
        assert_eq!(choose(&backends, 0).unwrap().ip().octets()[3], 2);
        assert_eq!(choose(&backends, 1).unwrap().ip().octets()[3], 2);
        assert_eq!(choose(&[b(1, false, false, true)], 0), None);
        assert_eq!(choose(&[], 0), None);
    }

    #[test]
    fn table_joins_services_and_slices_by_port_name() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }))
        .unwrap();
        let mut table = Table::default();
        table.apply_slice(&slice);
        assert!(table.backends(30080).is_empty());
        table.apply_service(&svc);
        let backends = table.backends(30080);
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[0].addr.to_string(), "10.0.0.1:8080");
        assert!(backends[1].serving && backends[1].terminating && !backends[1].ready);
        table.delete_slice(&slice);
        assert!(table.backends(30080).is_empty());
        table.delete_service(&svc);
        assert!(table.node_ports().is_empty());
    }

    #[test]
    fn cluster_ip_services_get_no_node_port() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        let mut table = Table::default();
        table.apply_service(&svc);
        assert!(table.node_ports().is_empty());
    }
}
