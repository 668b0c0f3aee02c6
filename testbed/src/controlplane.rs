//! Starting the real control plane: etcd on loopback, kube-apiserver on the bridge's gateway
//! address (so that pods in their namespaces reach it), kube-controller-manager with an
//! allow-list of controllers, and kube-scheduler. Each startup step is bounded and fails with the
//! log file to read.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;

use crate::binaries::Binaries;
use crate::certs::{self, Pki};
use crate::kubeconfig;
use crate::network::NetworkPlan;
use crate::process::Children;

/// The controllers that matter for Deployments, Services, PDBs, HPAs and namespaces. IPAM
/// (each node's pod range is fixed by its CNI configuration), volumes, certificates and cloud
/// controllers are left out.
pub const CONTROLLERS: &str = "deployment-controller,replicaset-controller,\
endpointslice-controller,endpoints-controller,disruption-controller,\
garbage-collector-controller,namespace-controller,serviceaccount-controller,\
serviceaccount-token-controller,root-ca-certificate-publisher-controller,\
clusterrole-aggregation-controller,horizontal-pod-autoscaler-controller";

/// The kubelets' heartbeats are real, so node lifecycle (NotReady after the grace period,
/// taints) and taint eviction run too.
pub const NODE_CONTROLLERS: &str = "node-lifecycle-controller,taint-eviction-controller";

/// Audit policy: metadata of every write (who, verb, resource, subresource, code), nothing for
/// reads, so that tests and benchmarks can count each client's writes at the API server.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
";

/// The audit log of writes, `<run>/logs/audit.log` (JSON lines, `audit.k8s.io/v1` Events).
pub const AUDIT_LOG: &str = "logs/audit.log";

const ETCD_READY: Duration = Duration::from_secs(30);
const APISERVER_READY: Duration = Duration::from_secs(120);
const CONTROLLERS_READY: Duration = Duration::from_secs(90);

/// What the started control plane offers to the rest of the run.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub apiserver_port: u16,
    pub server: String,
    /// The admin kubeconfig (CN=admin, O=system:masters).
    pub kubeconfig: PathBuf,
}

/// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and returns once the
/// API answers ready and the controllers have created the `default` ServiceAccount.
pub async fn start(
    bins: &Binaries,
    pki: &Pki,
    run_dir: &Path,
    plan: &NetworkPlan,
    children: &Children,
) -> Result<ControlPlane> {
    let gateway = plan.gateway;
    let node_ports = plan.node_ports;
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = |name: &str| logs.join(format!("{name}.log"));
    let started = Instant::now();

    let etcd_port = free_port(Ipv4Addr::LOCALHOST)?;
    let peer_port = free_port(Ipv4Addr::LOCALHOST)?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let etcd_args = flags(&[
        ("name", "testbed"),
        ("data-dir", &run_dir.join("etcd").to_string_lossy()),
        ("listen-client-urls", &etcd_url),
        ("advertise-client-urls", &etcd_url),
        ("listen-peer-urls", &peer_url),
        ("initial-advertise-peer-urls", &peer_url),
        ("initial-cluster", &format!("testbed={peer_url}")),
        // Test data needs no durability; fsync dominates etcd latency on small disks.
        ("unsafe-no-fsync", "true"),
        ("log-level", "warn"),
    ]);
    children.start("etcd", &bins.path("etcd"), &etcd_args, &log("etcd"))?;
    wait_for_tcp(
        Ipv4Addr::LOCALHOST,
        etcd_port,
        ETCD_READY,
        children,
        "etcd",
        &log("etcd"),
    )
    .await?;

    let audit_policy = run_dir.join("audit-policy.yaml");
    std::fs::write(&audit_policy, AUDIT_POLICY)?;
    let apiserver_port = free_port(gateway)?;
    let server = format!("https://{gateway}:{apiserver_port}");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let apiserver_args = flags(&[
        ("etcd-servers", &etcd_url),
        ("bind-address", &gateway.to_string()),
        ("advertise-address", &gateway.to_string()),
        ("secure-port", &apiserver_port.to_string()),
        ("tls-cert-file", &path(&pki.apiserver_cert)),
        ("tls-private-key-file", &path(&pki.apiserver_key)),
        ("client-ca-file", &path(&pki.ca_cert)),
        ("service-cluster-ip-range", &plan.service_cidr),
        // The kubelets: Node authorization with NodeRestriction, and the API server's client
        // certificate towards them (logs, exec, port-forward). OwnerReferencesPermissionEnforcement
        // runs as on OpenShift: setting `blockOwnerDeletion` on a child needs `update` on the
        // owner's `finalizers` subresource, so the operator's RBAC is proven where it is strictest.
        ("authorization-mode", "Node,RBAC"),
        (
            "enable-admission-plugins",
            "NodeRestriction,OwnerReferencesPermissionEnforcement",
        ),
        // Pods on a node that stops reporting are evicted 30 s after the node is marked
        // NotReady or unreachable (the default is 300 s), a setting many clusters shorten; the
        // lost-node proof relies on it to see the walk go on past such pods.
        ("default-not-ready-toleration-seconds", "30"),
        ("default-unreachable-toleration-seconds", "30"),
        (
            "kubelet-client-certificate",
            &path(&pki.apiserver_kubelet_client.cert),
        ),
        (
            "kubelet-client-key",
            &path(&pki.apiserver_kubelet_client.key),
        ),
        // The node's InternalIP only: a hostname would be looked up in the host's DNS, and that
        // lookup would leave the machine.
        ("kubelet-preferred-address-types", "InternalIP"),
        // The aggregation layer, for metrics-server's metrics.k8s.io (see `metrics.rs`): the
        // API server proxies to it with the front-proxy certificate and reaches it at its
        // endpoint's address (it runs on the host, outside any Service's proxy).
        ("requestheader-client-ca-file", &path(&pki.front_proxy_ca)),
        ("requestheader-allowed-names", certs::FRONT_PROXY_CLIENT),
        ("requestheader-username-headers", "X-Remote-User"),
        ("requestheader-group-headers", "X-Remote-Group"),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        (
            "proxy-client-cert-file",
            &path(&pki.front_proxy_client.cert),
        ),
        ("proxy-client-key-file", &path(&pki.front_proxy_client.key)),
        ("enable-aggregator-routing", "true"),
        (
            "service-node-port-range",
            &format!("{}-{}", node_ports.0, node_ports.1),
        ),
        (
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ),
        ("service-account-key-file", &path(&pki.sa_pub)),
        ("service-account-signing-key-file", &path(&pki.sa_key)),
        ("allow-privileged", "true"),
        ("cert-dir", &path(&run_dir.join("apiserver-certs"))),
        ("profiling", "false"),
        ("audit-policy-file", &path(&audit_policy)),
        ("audit-log-path", &path(&run_dir.join(AUDIT_LOG))),
    ]);
    children.start(
        "kube-apiserver",
        &bins.path("kube-apiserver"),
        &apiserver_args,
        &log("kube-apiserver"),
    )?;
    let kubeconfig = kubeconfig::write_kubeconfig(
        &run_dir.join("kubeconfig"),
        &server,
        &pki.ca_cert,
        &pki.admin,
        "admin",
    )?;
    wait_for_readyz(&kubeconfig, children, &log("kube-apiserver")).await?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f32(),
        "kube-apiserver ready"
    );

    let kcm_config = kubeconfig::write_kubeconfig(
        &run_dir.join("kube-controller-manager.kubeconfig"),
        &server,
        &pki.ca_cert,
        &pki.controller_manager,
        "system:kube-controller-manager",
    )?;
    let controllers = format!("{CONTROLLERS},{NODE_CONTROLLERS}");
    let kcm_args = flags(&[
        ("kubeconfig", &path(&kcm_config)),
        ("leader-elect", "false"),
        ("controllers", &controllers),
        // A node whose kubelet stops reporting turns NotReady after 20 s (upstream: 50 s), so
        // that lost-node tests take a fraction of a minute. Still twice the lease renewal.
        ("node-monitor-grace-period", "20s"),
        ("use-service-account-credentials", "true"),
        ("service-account-private-key-file", &path(&pki.sa_key)),
        ("root-ca-file", &path(&pki.ca_cert)),
        ("bind-address", "127.0.0.1"),
        ("secure-port", &free_port(Ipv4Addr::LOCALHOST)?.to_string()),
        ("cert-dir", &path(&run_dir.join("kcm-certs"))),
    ]);
    children.start(
        "kube-controller-manager",
        &bins.path("kube-controller-manager"),
        &kcm_args,
        &log("kube-controller-manager"),
    )?;

    let scheduler_config = kubeconfig::write_kubeconfig(
        &run_dir.join("kube-scheduler.kubeconfig"),
        &server,
        &pki.ca_cert,
        &pki.scheduler,
        "system:kube-scheduler",
    )?;
    let scheduler_args = flags(&[
        ("kubeconfig", &path(&scheduler_config)),
        ("leader-elect", "false"),
        ("bind-address", "127.0.0.1"),
        ("secure-port", &free_port(Ipv4Addr::LOCALHOST)?.to_string()),
    ]);
    children.start(
        "kube-scheduler",
        &bins.path("kube-scheduler"),
        &scheduler_args,
        &log("kube-scheduler"),
    )?;

    wait_for_default_service_account(&kubeconfig, children, &log("kube-controller-manager"))
        .await?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f32(),
        "control plane ready"
    );
    Ok(ControlPlane {
        apiserver_port,
        server,
        kubeconfig,
    })
}

/// Stops kube-apiserver (SIGTERM, SIGKILL after 5 s) and starts it again with the same flags:
/// same port, certificates and etcd. Returns once `/readyz` answers `ok` again. Clients see
/// their connections closed and refused until then, as in a control-plane upgrade.
pub async fn restart_apiserver(
    run_dir: &Path,
    kubeconfig: &Path,
    children: &Children,
) -> Result<()> {
    let started = Instant::now();
    let pid =
        tokio::task::block_in_place(|| children.restart("kube-apiserver", Duration::from_secs(5)))?;
    let log = run_dir.join("logs/kube-apiserver.log");
    wait_for_readyz(kubeconfig, children, &log).await?;
    tracing::info!(
        pid,
        seconds = started.elapsed().as_secs_f32(),
        "kube-apiserver restarted"
    );
    Ok(())
}

fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(name, value)| format!("--{name}={value}"))
        .collect()
}

/// A port the kernel just handed out on `ip`; free unless another process grabs it before the
/// component binds it (the component then fails and its log says so).
pub fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` every 200 ms until it holds, a child exits, or `limit` passes.
async fn poll_until<F, Fut>(
    what: &str,
    limit: Duration,
    log: &Path,
    children: &Children,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        children.ensure_running()?;
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            let cause = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!(
                "{what} not ready within {} s{cause}; read {}",
                limit.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_tcp(
    ip: Ipv4Addr,
    port: u16,
    limit: Duration,
    children: &Children,
    what: &str,
    log: &Path,
) -> Result<()> {
    poll_until(what, limit, log, children, || async move {
        Ok(tokio::net::TcpStream::connect((ip, port)).await.is_ok())
    })
    .await
}

async fn wait_for_readyz(kubeconfig: &Path, children: &Children, log: &Path) -> Result<()> {
    let client = kubeconfig::client(kubeconfig).await?;
    poll_until("kube-apiserver", APISERVER_READY, log, children, || {
        let client = client.clone();
        async move {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            Ok(client.request_text(request).await?.trim() == "ok")
        }
    })
    .await
}

/// The serviceaccount controller creating `default/default` shows that kube-controller-manager
/// runs and is authorized; pods cannot be admitted in a namespace before that account exists.
async fn wait_for_default_service_account(
    kubeconfig: &Path,
    children: &Children,
    log: &Path,
) -> Result<()> {
    let client = kubeconfig::client(kubeconfig).await?;
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client, "default");
    poll_until(
        "kube-controller-manager",
        CONTROLLERS_READY,
        log,
        children,
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.is_some()) }
        },
    )
    .await
}
