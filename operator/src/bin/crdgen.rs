//! Prints the GracefulService CustomResourceDefinition as YAML (written to crds/gracefulservice.yaml).

use clap::Parser;

/// Print the GracefulService CRD as YAML on stdout.
#[derive(Parser)]
#[command(version)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    let crd = graceful_operator::crd::definition().map_err(|e| e.to_string());
    match crd.and_then(|crd| serde_yaml::to_string(&crd).map_err(|e| e.to_string())) {
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
