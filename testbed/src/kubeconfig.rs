//! Kubeconfig files of the run and clients made from them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::certs::ClientCert;

/// A kubeconfig naming files (not embedded data), for kubectl, helm, kube-rs and the
/// components alike.
pub fn kubeconfig(server: &str, ca: &Path, client: &ClientCert, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: {user}
current-context: testbed
",
        ca = ca.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

/// Writes a kubeconfig (see [`kubeconfig`]) to `path`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    client: &ClientCert,
    user: &str,
) -> Result<PathBuf> {
    let dir = path.parent().context("kubeconfig path has no parent")?;
    let name = path
        .file_name()
        .context("kubeconfig path has no file name")?;
    crate::certs::write(
        dir,
        &name.to_string_lossy(),
        &kubeconfig(server, ca, client, user),
    )
}

/// A fresh client for the kubeconfig at `path`. Clients are bound to the tokio runtime that made
/// them, so callers make one per test (or per runtime) and never keep one in a static.
pub async fn client(path: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_names_files() {
        let client = ClientCert {
            cert: PathBuf::from("/r/admin.crt"),
            key: PathBuf::from("/r/admin.key"),
        };
        let config = kubeconfig(
            "https://10.213.7.1:6443",
            Path::new("/r/ca.crt"),
            &client,
            "admin",
        );
        assert!(config.contains("server: https://10.213.7.1:6443"));
        assert!(config.contains("client-key: /r/admin.key"));
    }
}
