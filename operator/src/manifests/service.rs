//! The Service in front of the pods: the main port only, never the admin port.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use super::pod::MAIN_PORT_NAME;
use crate::crd::{AppProtocol, GracefulServiceSpec, ServiceType, selector_labels};

/// The Service port's `appProtocol` for h2c (a standard value: KEP-3726), which tells proxies
/// and meshes to speak HTTP/2 over cleartext to the pods.
pub const H2C_APP_PROTOCOL: &str = "kubernetes.io/h2c";

/// The Service for `spec`.
pub fn build(owner: &Owner, spec: &GracefulServiceSpec) -> Service {
    let node_port = match spec.service.type_ {
        ServiceType::NodePort => spec.service.node_port,
        ServiceType::ClusterIP => None,
    };
    let type_ = match spec.service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
    };
    Service {
        metadata: owner.child_meta(),
        spec: Some(K8sServiceSpec {
            type_: Some(type_.to_string()),
            selector: Some(selector_labels(&owner.name)),
            ports: Some(vec![ServicePort {
                name: Some(MAIN_PORT_NAME.to_string()),
                port: spec.ports.main,
                target_port: Some(IntOrString::String(MAIN_PORT_NAME.to_string())),
                node_port,
                protocol: Some("TCP".to_string()),
                app_protocol: match spec.ports.app_protocol {
                    AppProtocol::Http => None,
                    AppProtocol::H2c => Some(H2C_APP_PROTOCOL.to_string()),
                },
            }]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_owner;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn exposes_only_the_main_port(main in 1i32..65535, admin in 1i32..65535, node_port in proptest::option::of(30000i32..32767), nodeport_type: bool) {
            let mut spec = GracefulServiceSpec::default();
            spec.ports.main = main;
            spec.ports.admin = admin;
            spec.service.type_ = if nodeport_type { ServiceType::NodePort } else { ServiceType::ClusterIP };
            spec.service.node_port = node_port;
            let svc = build(&test_owner("web"), &spec);
            let s = svc.spec.unwrap();
            let ports = s.ports.unwrap();
            prop_assert_eq!(ports.len(), 1);
            prop_assert_eq!(ports[0].port, main);
            prop_assert_eq!(&ports[0].target_port, &Some(IntOrString::String("http".into())));
            prop_assert_eq!(ports[0].node_port, if nodeport_type { node_port } else { None });
            prop_assert_eq!(s.type_.as_deref(), Some(if nodeport_type { "NodePort" } else { "ClusterIP" }));
            prop_assert_eq!(&s.selector.unwrap()["graceful.dev/service"], "web");
        }
    }
}
