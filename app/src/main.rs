//! graceful-app: an HTTP app that drains without losing a request. See docs/architecture.md.

use std::process::ExitCode;
use std::sync::Arc;

use graceful_app::Threads;
use graceful_app::config::AppConfig;
use graceful_app::context::Workload;
use graceful_app::handlers::AppWork;

fn main() -> ExitCode {
    let config = AppConfig::from_args();
    let workload = Workload::App(Arc::new(AppWork::new(&config)));
    graceful_app::run_to_exit("graceful-app", &config.server, workload, Threads::PerCore)
}
