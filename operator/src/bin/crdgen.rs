//! Prints the GracefulService CustomResourceDefinition as YAML (written to crds/gracefulservice.yaml).

use clap::Parser;
use kube::CustomResourceExt;

/// Print the GracefulService CRD as YAML on stdout.
#[derive(Parser)]
#[command(version)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    match serde_yaml::to_string(&graceful_operator::GracefulService::crd()) {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
