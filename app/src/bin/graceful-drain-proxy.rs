//! graceful-drain-proxy: the drain protocol in front of an app that knows nothing of it. Runs
//! as a native sidecar in the app's pod; see docs/architecture.md, "The drain proxy".

use std::process::ExitCode;
use std::sync::Arc;

use graceful_app::Threads;
use graceful_app::config::ProxyConfig;
use graceful_app::context::Workload;
use graceful_app::proxy::Forwarder;

fn main() -> ExitCode {
    let config = ProxyConfig::from_args();
    let forwarder = match Forwarder::new(&config) {
        Ok(forwarder) => forwarder,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let workload = Workload::Proxy(Arc::new(forwarder));
    let threads = Threads::Fixed(config.worker_threads);
    graceful_app::run_to_exit("graceful-drain-proxy", &config.server, workload, threads)
}
