//! Service-account projection: a bound token from the TokenRequest API, the cluster CA and the
//! namespace, written to a per-pod directory that the process sees at the standard path.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

/// The kubelet asks for 3607 s: the API server then issues a long-lived token (extended
/// expiration) that is still bound to the pod, so no refresh loop is needed for test runs.
const TOKEN_SECONDS: i64 = 3607;

/// Whether a token is mounted: the pod's field wins over the service account's.
pub fn wants_token(pod: &Pod, account: Option<&ServiceAccount>) -> bool {
    let spec = pod
        .spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token);
    spec.or_else(|| account.and_then(|a| a.automount_service_account_token))
        .unwrap_or(true)
}

/// Requests a token for the pod's service account and writes the directory; returns its path,
/// or None when the pod opted out.
pub async fn project(
    client: &kube::Client,
    pod: &Pod,
    ca_file: &Path,
    pod_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let account_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let account = accounts
        .get_opt(&account_name)
        .await
        .with_context(|| format!("reading serviceaccount {namespace}/{account_name}"))?;
    if !wants_token(pod, account.as_ref()) {
        return Ok(None);
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name.clone()),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(&account_name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("token request for serviceaccount {namespace}/{account_name}"))?;
    let token = issued
        .status
        .map(|s| s.token)
        .context("token request returned no token")?;
    let dir = pod_dir.join("serviceaccount");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::copy(ca_file, dir.join("ca.crt"))
        .with_context(|| format!("copying {}", ca_file.display()))?;
    std::fs::write(dir.join("namespace"), &namespace)?;
    Ok(Some(dir))
}
