//! `node-agent`: the testbed's stand-in for kubelet and container runtime.
//!
//! Flags (stable; `testbed up` passes them):
//! - `--kubeconfig PATH`       identity for nodes, leases, pods, pod status, tokens, events
//! - `--nodes N`               registers Ready nodes node-0 .. node-(N-1) (default 3)
//! - `--bridge NAME`           existing bridge the pods' veth pairs join
//! - `--pod-cidr CIDR`         pod address range, e.g. 10.88.0.0/24
//! - `--gateway IP`            bridge address: pods' default route, hostIP, API host for pods
//! - `--run-dir DIR`           pod logs at DIR/pods/<ns>_<pod>/<container>.log, DIR/agent-events.jsonl
//! - `--netns-prefix PREFIX`   pod network namespaces are PREFIX-<n>
//! - `--apiserver-port PORT`   KUBERNETES_SERVICE_PORT for pods (host is the gateway)
//! - `--ca-file PATH`          CA of the API server, written as ca.crt for pods
//! - `--image REPO=PATH`       repeatable: image repository to local binary
//! - `--log-format text|json`  (default text)
//!
//! Logs go to stderr (RUST_LOG filters; default info).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: testbed::agent::Args,
    /// Log format on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.agent.validate() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    testbed::agent::init_tracing(&cli.log_format);
    match testbed::agent::run(cli.agent).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
