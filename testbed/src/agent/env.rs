//! A container's environment, as the kubelet builds it: a base (PATH, HOSTNAME), the in-cluster
//! API address when a service-account token is mounted, then the container's `env` in order,
//! with `valueFrom.fieldRef` for the pod's own fields.

use k8s_openapi::api::core::v1::{Container, Pod};

/// Values the kubelet knows about the pod when it starts a container.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub service_account: String,
    /// The container's HOME: a private empty directory, never the agent's (whose ~/.kube/config
    /// would let an in-cluster client skip its service account).
    pub home: String,
}

impl PodFacts {
    fn field(&self, pod: &Pod, path: &str) -> Result<String, String> {
        Ok(match path {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => self.uid.clone(),
            "spec.nodeName" => self.node_name.clone(),
            "spec.serviceAccountName" => self.service_account.clone(),
            "status.podIP" => self.pod_ip.clone(),
            "status.hostIP" => self.host_ip.clone(),
            other => {
                let labels = pod.metadata.labels.as_ref();
                let annotations = pod.metadata.annotations.as_ref();
                let lookup = |prefix: &str| {
                    other
                        .strip_prefix(prefix)
                        .and_then(|k| k.strip_prefix("['"))
                        .and_then(|k| k.strip_suffix("']"))
                };
                if let Some(key) = lookup("metadata.labels") {
                    labels.and_then(|l| l.get(key)).cloned().unwrap_or_default()
                } else if let Some(key) = lookup("metadata.annotations") {
                    annotations
                        .and_then(|a| a.get(key))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    return Err(format!("unsupported fieldRef {other:?}"));
                }
            }
        })
    }
}

/// The API server address a pod's in-cluster client dials.
#[derive(Debug, Clone)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: u16,
}

/// Builds the environment; unsupported `valueFrom` sources are an error (CreateContainerConfigError).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    api: Option<&ApiEndpoint>,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), facts.name.clone()),
        ("HOME".into(), facts.home.clone()),
    ];
    if let Some(api) = api {
        env.push(("KUBERNETES_SERVICE_HOST".into(), api.host.clone()));
        env.push(("KUBERNETES_SERVICE_PORT".into(), api.port.to_string()));
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            match &source.field_ref {
                Some(field) => facts.field(pod, &field.field_path)?,
                None => {
                    return Err(format!(
                        "env {}: only valueFrom.fieldRef is supported",
                        var.name
                    ));
                }
            }
        } else {
            var.value.clone().unwrap_or_default()
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> PodFacts {
        PodFacts {
            name: "web-1".into(),
            namespace: "demo".into(),
            uid: "u".into(),
            node_name: "node-0".into(),
            pod_ip: "10.88.0.5".into(),
            host_ip: "10.88.0.1".into(),
            service_account: "default".into(),
            home: "/run/pod-home".into(),
        }
    }

    #[test]
    fn values_field_refs_and_api_address() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": []}
        }))
        .unwrap();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "env": [
                {"name": "A", "value": "1"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "A", "value": "2"}
            ]
        }))
        .unwrap();
        let api = ApiEndpoint {
            host: "10.88.0.1".into(),
            port: 6443,
        };
        let env = container_env(&pod, &container, &facts(), Some(&api)).unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("2"));
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("IP"), Some("10.88.0.5"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
    }

    #[test]
    fn secret_refs_are_rejected_clearly() {
        let pod = Pod::default();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
        }))
        .unwrap();
        let err = container_env(&pod, &container, &facts(), None).unwrap_err();
        assert!(err.contains("fieldRef"));
    }
}
