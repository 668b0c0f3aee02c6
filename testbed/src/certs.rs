//! The run's public-key infrastructure: one CA, the apiserver's serving certificate, client
//! certificates per component and the service-account signing key.
//! All keys are ECDSA P-256 (rcgen's default), which every component accepts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths of everything [`generate`] writes.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    /// The service-account signing key (private, PKCS#8) and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub admin: ClientCert,
    pub controller_manager: ClientCert,
    pub scheduler: ClientCert,
    /// kube-apiserver's client certificate towards the kubelets (logs, exec, port-forward).
    pub apiserver_kubelet_client: ClientCert,
    /// `system:kube-proxy`, which the bootstrap role binding `system:node-proxier` names.
    pub kube_proxy: ClientCert,
    /// One per node, `system:node:<name>` in `system:nodes`, as the Node authorizer expects.
    pub nodes: Vec<ClientCert>,
    /// The CA of the aggregation layer's front proxy (`--requestheader-client-ca-file`), apart
    /// from the cluster's CA as the Kubernetes docs advise, and the API server's certificate
    /// towards aggregated API servers such as metrics-server (`--proxy-client-cert-file`).
    pub front_proxy_ca: PathBuf,
    pub front_proxy_client: ClientCert,
}

/// The common name the API server's front-proxy certificate carries
/// (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes a fresh PKI into `dir`. `gateway` and `service_ip` (the first service-cluster IP,
/// behind `kubernetes.default.svc`) become SANs of the serving certificate; each of `nodes` gets
/// a kubelet client certificate.
pub fn generate(
    dir: &Path,
    gateway: Ipv4Addr,
    service_ip: Ipv4Addr,
    nodes: &[String],
) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "graceful-testbed-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params.clone(), ca_key)?;
    let ca_cert = write(dir, "ca.crt", &ca.pem())?;
    write(dir, "ca.key", &ca.key().serialize_pem())?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "graceful-testbed-front-proxy-ca");
    let front_proxy = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let front_proxy_ca = write(dir, "front-proxy-ca.crt", &front_proxy.pem())?;

    let sans = vec![
        "127.0.0.1".to_string(),
        gateway.to_string(),
        service_ip.to_string(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    let mut serving = CertificateParams::new(sans)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;
    let apiserver_cert = write(dir, "apiserver.crt", &serving_cert.pem())?;
    let apiserver_key = write(dir, "apiserver.key", &serving_key.serialize_pem())?;

    let issue = |issuer: &CertifiedIssuer<'_, KeyPair>,
                 file: &str,
                 cn: &str,
                 org: Option<&str>|
     -> Result<ClientCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        Ok(ClientCert {
            cert: write(dir, &format!("{file}.crt"), &cert.pem())?,
            key: write(dir, &format!("{file}.key"), &key.serialize_pem())?,
        })
    };
    let client = |file: &str, cn: &str, org: Option<&str>| issue(&ca, file, cn, org);
    let front_proxy_client = issue(&front_proxy, "front-proxy-client", FRONT_PROXY_CLIENT, None)?;
    let admin = client("admin", "admin", Some("system:masters"))?;
    let controller_manager = client(
        "kube-controller-manager",
        "system:kube-controller-manager",
        None,
    )?;
    let scheduler = client("kube-scheduler", "system:kube-scheduler", None)?;
    let apiserver_kubelet_client = client(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
    )?;
    let kube_proxy = client("kube-proxy", "system:kube-proxy", None)?;
    let nodes = nodes
        .iter()
        .map(|node| {
            client(
                &format!("kubelet-{node}"),
                &format!("system:node:{node}"),
                Some("system:nodes"),
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let sa = KeyPair::generate()?;
    let sa_key = write(dir, "sa.key", &sa.serialize_pem())?;
    let sa_pub = write(dir, "sa.pub", &sa.public_key_pem())?;

    Ok(Pki {
        ca_cert,
        apiserver_cert,
        apiserver_key,
        sa_key,
        sa_pub,
        admin,
        controller_manager,
        scheduler,
        apiserver_kubelet_client,
        kube_proxy,
        nodes,
        front_proxy_ca,
        front_proxy_client,
    })
}

pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
    let mut file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_pki() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("testbed-pki-{}", std::process::id()));
        let pki = generate(
            &dir,
            Ipv4Addr::new(10, 213, 7, 1),
            Ipv4Addr::new(10, 96, 0, 1),
            &["node-0".to_string()],
        )?;
        assert_eq!(pki.nodes.len(), 1);
        for path in [
            &pki.ca_cert,
            &pki.apiserver_cert,
            &pki.admin.cert,
            &pki.sa_pub,
            &pki.front_proxy_ca,
            &pki.front_proxy_client.cert,
        ] {
            assert!(std::fs::read_to_string(path)?.starts_with("-----BEGIN"));
        }
        assert!(std::fs::read_to_string(&pki.sa_key)?.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
