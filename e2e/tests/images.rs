//! The images the testbed builds agree with the Dockerfile they stand in for: for each final
//! stage, the built image's user, entrypoint, exposed ports and environment are the stage's, its
//! base is recorded, and the entrypoint is an executable file of the image that runs with only
//! the image's own libraries. A change on either side without the other fails here.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`) and the node runtime
//! (`testbed/scripts/install-node-runtime.sh`, for umoci); no cluster.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use testbed::images::{self, Base};

#[tokio::test]
async fn built_images_match_the_dockerfile_final_stages() -> Result<()> {
    testbed::skip_without_cluster!();
    let bins = testbed::binaries::Binaries::locate_or_build().await?;
    let runtime = testbed::binaries::NodeRuntime::locate_or_install().await?;
    let out = std::env::temp_dir().join(testbed::fixture::unique_name("images"));
    let result = check(&bins, &runtime.dir, &out);
    let _ = std::fs::remove_dir_all(&out);
    result
}

fn check(bins: &testbed::binaries::Binaries, runtime: &Path, out: &Path) -> Result<()> {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))?;
    let stages = images::final_stages(&dockerfile)?;
    ensure!(
        stages.len() == 2,
        "app and operator stages expected: {stages:?}"
    );
    let archives = build_from_target(bins, runtime, out)?;
    for stage in &stages {
        let (_, repository) = images::REPOSITORIES
            .iter()
            .find(|(target, _)| *target == stage.target)
            .with_context(|| format!("no repository for {}", stage.target))?;
        let archive = archives
            .iter()
            .find(|a| a.repository == *repository)
            .with_context(|| format!("no image built for {repository}"))?;
        let layout = images::layout_of(&archive.archive);
        let config = images::read_config(&layout)?;

        assert_eq!(
            config["User"],
            stage.user.as_str(),
            "{}: user",
            stage.target
        );
        let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone())?;
        assert_eq!(entrypoint, stage.entrypoint, "{}: entrypoint", stage.target);
        let mut ports: Vec<String> = config["ExposedPorts"]
            .as_object()
            .map(|ports| ports.keys().cloned().collect())
            .unwrap_or_default();
        ports.sort();
        let mut declared = stage.exposed_ports.clone();
        declared.sort();
        assert_eq!(ports, declared, "{}: exposed ports", stage.target);
        let env: Vec<String> = serde_json::from_value(config["Env"].clone())?;
        for (key, value) in &stage.env {
            assert!(
                env.contains(&format!("{key}={value}")),
                "{}: {key} missing from {env:?}",
                stage.target
            );
        }
        assert_eq!(
            config["Labels"]["dev.graceful.testbed.base"],
            stage.base.as_str(),
            "{}: base",
            stage.target
        );
        assert_eq!(Base::of(&stage.base)?, Base::DistrolessCc);

        // The entrypoint runs inside the image's root filesystem, with its libraries only.
        let rootfs = out.join(format!("{}-rootfs", stage.target));
        let status = Command::new(runtime.join("bin/umoci"))
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:{}", layout.display(), images::TAG))
            .arg(&rootfs)
            .status()?;
        ensure!(status.success(), "umoci raw unpack failed");
        let version = Command::new("chroot")
            .arg(&rootfs)
            .arg(&entrypoint[0])
            .arg("--version")
            .output()?;
        ensure!(
            version.status.success(),
            "{} does not run in its image: {}",
            entrypoint[0],
            String::from_utf8_lossy(&version.stderr)
        );
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd"))?;
        let uid = stage.user.split(':').next().unwrap_or_default();
        assert!(
            passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
            "user {uid} not in /etc/passwd"
        );
    }
    Ok(())
}

/// The images of the Dockerfile and the pause image, built from `target/<profile>/` (where this
/// test's binaries are) into `out`.
fn build_from_target(
    bins: &testbed::binaries::Binaries,
    runtime: &Path,
    out: &Path,
) -> Result<Vec<testbed::node::ImageArchive>> {
    let files_dir = testbed::bin_path("graceful-app")?
        .parent()
        .context("no target folder")?
        .to_path_buf();
    images::project_images_from(bins, runtime, &files_dir, out)
}
