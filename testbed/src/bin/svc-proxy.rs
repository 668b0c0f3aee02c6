//! `svc-proxy`: the testbed's stand-in for kube-proxy.
//!
//! Flags (stable; `testbed up` passes them):
//! - `--kubeconfig PATH`            identity allowed to watch Services and EndpointSlices
//! - `--propagation-delay-ms MS`    lag of the proxy's view behind the API (default 1000)
//! - `--listen-ip IP`               address node ports listen on (default 127.0.0.1)
//! - `--log-format text|json`       (default text)
//!
//! Logs go to stderr (RUST_LOG filters; default info).

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    proxy: testbed::proxy::Args,
    /// Log format on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    testbed::agent::init_tracing(&cli.log_format);
    match testbed::proxy::run(cli.proxy).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
