//! The project's container images, built on this machine with umoci (no Docker, no registry):
//! the app and operator images from the Dockerfile's final stages and this workspace's binaries,
//! and the pause image from the Kubernetes source. Each becomes an OCI archive that every node's
//! containerd imports.
//!
//! The Dockerfile is the one source of what an image is: its final stages are parsed here (base,
//! copied binaries, user, exposed ports, env, entrypoint) and the build follows them. The bases
//! cannot be pulled, so a base is rebuilt from the host for the kinds known here; see [`Base`].

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What a final stage of the Dockerfile declares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageSpec {
    /// The stage name (`--target`), e.g. `app`.
    pub target: String,
    /// The `FROM` reference.
    pub base: String,
    /// `COPY --from=<build stage> <source> <dest>`: (source file name, destination path).
    pub copies: Vec<(String, String)>,
    pub user: String,
    /// `EXPOSE` entries as OCI writes them, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    pub env: Vec<(String, String)>,
    pub entrypoint: Vec<String>,
}

/// The final stages of a Dockerfile: those no other stage copies from.
pub fn final_stages(dockerfile: &str) -> Result<Vec<StageSpec>> {
    let mut stages: Vec<StageSpec> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for line in logical_lines(dockerfile) {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let rest = rest.trim();
        let word = word.to_ascii_uppercase();
        if word == "FROM" {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let target = match parts.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("stage-{}", stages.len()),
            };
            stages.push(StageSpec {
                target,
                base: parts.first().unwrap_or(&"").to_string(),
                ..StageSpec::default()
            });
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            continue; // ARG before the first FROM
        };
        match word.as_str() {
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                if let Some(from) = parts.iter().find_map(|p| p.strip_prefix("--from=")) {
                    sources.push(from.to_string());
                    let paths: Vec<&&str> = parts.iter().filter(|p| !p.starts_with("--")).collect();
                    if let [src, dest] = paths.as_slice() {
                        let file = Path::new(src)
                            .file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        stage.copies.push((file, dest.to_string()));
                    }
                }
            }
            "USER" => stage.user = rest.to_string(),
            "EXPOSE" => stage.exposed_ports.extend(rest.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "ENV" => {
                if let Some((key, value)) = rest.split_once('=') {
                    stage.env.push((key.trim().into(), value.trim().into()));
                }
            }
            "ENTRYPOINT" => {
                stage.entrypoint = serde_json::from_str(rest)
                    .with_context(|| format!("ENTRYPOINT must be a JSON array: {rest}"))?;
            }
            _ => {}
        }
    }
    Ok(stages
        .into_iter()
        .filter(|s| !sources.contains(&s.target))
        .collect())
}

/// Lines with comments dropped and `\` continuations joined.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// The bases this builder can stand in for. distroless `cc` is glibc, libgcc and a `nonroot`
/// user (65532): the copied binaries' shared libraries (from `ldd`, this host being Debian 12 as
/// `cc-debian12` is), `/etc/passwd` and `/etc/group` with root, nobody and nonroot, `/tmp`, and
/// distroless's PATH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    DistrolessCc,
    /// An empty image (the pause image's `FROM scratch`).
    Scratch,
}

impl Base {
    pub fn of(reference: &str) -> Result<Self> {
        if reference == "scratch" {
            return Ok(Base::Scratch);
        }
        if reference.starts_with("gcr.io/distroless/cc-debian12") {
            return Ok(Base::DistrolessCc);
        }
        bail!("cannot stand in for base image {reference}: only distroless cc-debian12 and scratch")
    }
}

const DISTROLESS_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n";

/// One image to build: a stage, the folder holding the files its COPY lines name, and a tag.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub spec: StageSpec,
    /// Where `COPY --from=build /out/<file>` finds `<file>` (a cargo target profile folder).
    pub files_dir: PathBuf,
    /// `repository:tag`.
    pub reference: String,
}

/// Builds `image` into the OCI layout `<out_dir>/<target>/layout` and the archive
/// `<out_dir>/<target>.tar` of it, with `umoci`; returns the archive.
pub fn build(umoci: &Path, image: &ImageBuild, out_dir: &Path) -> Result<PathBuf> {
    let base = Base::of(&image.spec.base)?;
    let tag = image
        .reference
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .context("image reference without a tag")?;
    let work = out_dir.join(&image.spec.target);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let at = format!("{}:{tag}", layout.display());
    run(umoci, &["init", "--layout", &layout.to_string_lossy()])?;
    run(umoci, &["new", "--image", &at])?;
    run(
        umoci,
        &["unpack", "--image", &at, &bundle.to_string_lossy()],
    )?;
    let rootfs = bundle.join("rootfs");
    let mut binaries = Vec::new();
    for (file, dest) in &image.spec.copies {
        let source = image.files_dir.join(file);
        let target = rootfs.join(dest.trim_start_matches('/'));
        copy_file(&source, &target, 0o755)?;
        binaries.push(source);
    }
    if base == Base::DistrolessCc {
        for library in shared_libraries(&binaries)? {
            copy_file(&library, &rootfs.join(library.strip_prefix("/")?), 0o755)?;
        }
        write_file(&rootfs.join("etc/passwd"), PASSWD)?;
        write_file(&rootfs.join("etc/group"), GROUP)?;
        for dir in ["tmp", "home/nonroot"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
        std::os::unix::fs::chown(rootfs.join("home/nonroot"), Some(65532), Some(65532))?;
    }
    run(
        umoci,
        &["repack", "--image", &at, &bundle.to_string_lossy()],
    )?;
    let mut config: Vec<String> = vec!["config".into(), "--image".into(), at.clone()];
    if !image.spec.user.is_empty() {
        config.push(format!("--config.user={}", image.spec.user));
    }
    for entry in &image.spec.entrypoint {
        config.push(format!("--config.entrypoint={entry}"));
    }
    for port in &image.spec.exposed_ports {
        config.push(format!("--config.exposedports={port}"));
    }
    if base == Base::DistrolessCc {
        config.push(format!("--config.env={DISTROLESS_PATH}"));
    }
    for (key, value) in &image.spec.env {
        config.push(format!("--config.env={key}={value}"));
    }
    config.push(format!(
        "--config.label=dev.graceful.testbed.base={}",
        image.spec.base
    ));
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    run(umoci, &config)?;
    std::fs::remove_dir_all(&bundle)?;
    let archive = out_dir.join(format!("{}.tar", image.spec.target));
    pack(&layout, &archive)?;
    Ok(archive)
}

/// The OCI layout [`build`] left beside `archive`.
pub fn layout_of(archive: &Path) -> PathBuf {
    archive.with_extension("").join("layout")
}

/// Adds `tag` to the layout beside `archive` as a copy of `from` that differs only in a label
/// (so it has a digest of its own, and the kubelet reports the tag a pod asked for), and packs
/// the layout into `archive` again. Serialized across processes by a lock on the layout.
pub fn add_tag(umoci: &Path, archive: &Path, from: &str, tag: &str) -> Result<()> {
    use nix::fcntl::{Flock, FlockArg};
    let layout = layout_of(archive);
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.with_extension("lock"))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("cannot lock {}: {errno}", layout.display()))?;
    let source = format!("{}:{from}", layout.display());
    run(
        umoci,
        &[
            "config",
            "--image",
            &source,
            "--tag",
            tag,
            &format!("--config.label=dev.graceful.testbed.tag={tag}"),
        ],
    )?;
    pack(&layout, archive)
}

fn pack(layout: &Path, archive: &Path) -> Result<()> {
    let partial = archive.with_extension("tar.partial");
    let status = Command::new("tar")
        .args(["-C", &layout.to_string_lossy(), "-cf"])
        .arg(&partial)
        .arg(".")
        .status()
        .context("cannot run tar")?;
    if !status.success() {
        bail!("tar of {} failed", layout.display());
    }
    std::fs::rename(&partial, archive)?;
    Ok(())
}

/// The image config (`config` object of the OCI config blob) of the single image in an OCI
/// layout folder or archive's extracted folder.
pub fn read_config(layout: &Path) -> Result<serde_json::Value> {
    let blob = |digest: &str| -> Result<serde_json::Value> {
        let hex = digest
            .strip_prefix("sha256:")
            .context("digest is not sha256")?;
        let path = layout.join("blobs/sha256").join(hex);
        Ok(serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        )?)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest = blob(
        index["manifests"][0]["digest"]
            .as_str()
            .context("index without manifest")?,
    )?;
    let config = blob(
        manifest["config"]["digest"]
            .as_str()
            .context("manifest without config")?,
    )?;
    Ok(config["config"].clone())
}

/// Absolute paths of the shared libraries `binaries` load, the dynamic loader included.
fn shared_libraries(binaries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for binary in binaries {
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .context("cannot run ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("not a dynamic executable") || !out.status.success() {
            continue;
        }
        for line in text.lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.push(PathBuf::from(path));
            }
        }
    }
    libraries.sort();
    libraries.dedup();
    Ok(libraries)
}

fn copy_file(source: &Path, target: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, target)
        .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn run(program: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The repository of each Dockerfile target; the tag is the workspace version, which the CRD's
/// default image and the chart's appVersion name too.
pub const REPOSITORIES: [(&str, &str); 2] = [
    ("app", "ghcr.io/graceful-dev/graceful-app"),
    ("operator", "ghcr.io/graceful-dev/graceful-operator"),
];

pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// Builds the Dockerfile's images from the binaries next to the running `testbed` binary, and
/// the pause image from the control-plane folder's `pause`, into `out_dir`.
pub fn project_images(
    bins: &crate::binaries::Binaries,
    runtime: &Path,
    out_dir: &Path,
) -> Result<Vec<crate::node::ImageArchive>> {
    let files_dir = std::env::current_exe()?
        .parent()
        .context("testbed binary has no folder")?
        .to_path_buf();
    project_images_from(bins, runtime, &files_dir, out_dir)
}

/// [`project_images`] with the workspace binaries taken from `files_dir`.
pub fn project_images_from(
    bins: &crate::binaries::Binaries,
    runtime: &Path,
    files_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<crate::node::ImageArchive>> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(out_dir)?;
    let umoci = runtime.join("bin/umoci");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile");
    let text = std::fs::read_to_string(&dockerfile)
        .with_context(|| format!("cannot read {}", dockerfile.display()))?;
    let mut archives = Vec::new();
    for spec in final_stages(&text)? {
        let repository = REPOSITORIES
            .iter()
            .find(|(target, _)| *target == spec.target)
            .map(|(_, repo)| repo.to_string())
            .with_context(|| format!("no repository for Dockerfile target {}", spec.target))?;
        for (file, _) in &spec.copies {
            if !files_dir.join(file).is_file() {
                bail!(
                    "{} is not built; run `cargo build --workspace --bins` first",
                    files_dir.join(file).display()
                );
            }
        }
        let image = ImageBuild {
            spec,
            files_dir: files_dir.to_path_buf(),
            reference: format!("{repository}:{TAG}"),
        };
        archives.push(crate::node::ImageArchive {
            repository,
            archive: build(&umoci, &image, out_dir)?,
        });
    }
    let (repository, tag) = crate::node::PAUSE_IMAGE
        .rsplit_once(':')
        .context("pause image without tag")?;
    let pause = ImageBuild {
        spec: pause_stage(),
        files_dir: bins.dir.clone(),
        reference: format!("{repository}:{tag}"),
    };
    archives.push(crate::node::ImageArchive {
        repository: repository.to_string(),
        archive: build(&umoci, &pause, out_dir)?,
    });
    tracing::info!(
        seconds = started.elapsed().as_secs_f32(),
        images = archives.len(),
        "images built"
    );
    Ok(archives)
}

/// The pause image's stage, as upstream's build/pause/Dockerfile declares it.
pub fn pause_stage() -> StageSpec {
    StageSpec {
        target: "pause".into(),
        base: "scratch".into(),
        copies: vec![("pause".into(), "/pause".into())],
        user: "65535:65535".into(),
        entrypoint: vec!["/pause".into()],
        ..StageSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = r#"# comment
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
RUN cargo build \
    --release
FROM gcr.io/distroless/cc-debian12:nonroot AS app
COPY --from=build /out/graceful-app /usr/local/bin/graceful-app
USER 65532:65532
EXPOSE 8080 9090
ENV GRACEFUL_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/graceful-app"]
"#;

    #[test]
    fn final_stages_are_those_nothing_copies_from() -> Result<()> {
        let stages = final_stages(DOCKERFILE)?;
        assert_eq!(stages.len(), 1);
        let app = &stages[0];
        assert_eq!(app.target, "app");
        assert_eq!(app.base, "gcr.io/distroless/cc-debian12:nonroot");
        assert_eq!(
            app.copies,
            vec![("graceful-app".into(), "/usr/local/bin/graceful-app".into())]
        );
        assert_eq!(app.user, "65532:65532");
        assert_eq!(app.exposed_ports, vec!["8080/tcp", "9090/tcp"]);
        assert_eq!(app.env, vec![("GRACEFUL_LOG_FORMAT".into(), "json".into())]);
        assert_eq!(app.entrypoint, vec!["/usr/local/bin/graceful-app"]);
        assert_eq!(Base::of(&app.base)?, Base::DistrolessCc);
        assert!(Base::of("alpine:3").is_err());
        Ok(())
    }

    #[test]
    fn the_repository_dockerfile_has_the_two_images() -> Result<()> {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))?;
        let targets: Vec<String> = final_stages(&text)?.into_iter().map(|s| s.target).collect();
        assert_eq!(targets, vec!["app", "operator"]);
        Ok(())
    }
}
