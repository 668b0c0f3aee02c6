//! Image references to local binaries, and Kubernetes command/args semantics.
//!
//! No container engine runs here: an image *repository* (the reference without `:tag` or
//! `@digest`) maps to a local executable, so changing a tag still triggers a real rolling update
//! that runs the same binary. The image's entrypoint is that binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository part of an image reference: `ghcr.io/a/b:v1` and `ghcr.io/a/b@sha256:..`
/// both give `ghcr.io/a/b`. A `:` inside the registry host (`localhost:5000/x`) is kept.
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

/// Parses one `--image REPO=PATH` flag value.
pub fn parse_mapping(flag: &str) -> Result<(String, PathBuf), String> {
    match flag.split_once('=') {
        Some((repo, path)) if !repo.is_empty() && !path.is_empty() => {
            Ok((repo.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected REPO=PATH, got {flag:?}")),
    }
}

/// Why a container cannot start from its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// No local binary is mapped to the image's repository: a kubelet reports ErrImagePull.
    NotMapped(String),
    /// `command[0]` names a binary other than the image's entrypoint.
    CommandMismatch { command: String, binary: PathBuf },
}

impl ImageError {
    /// The waiting reason a kubelet would report.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::NotMapped(_) => "ErrImagePull",
            ImageError::CommandMismatch { .. } => "CreateContainerError",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ImageError::NotMapped(image) => format!(
                "failed to pull image {image:?}: repository {:?} is not mapped to a local binary \
                 (node-agent --image REPO=PATH)",
                repository(image)
            ),
            ImageError::CommandMismatch { command, binary } => format!(
                "command {command:?} is not the image's binary {} (only the mapped binary can run)",
                binary.display()
            ),
        }
    }
}

/// What to execute for a container: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Resolves a container's image, command and args like a container runtime would: without
/// `command` the image entrypoint (the mapped binary) runs with `args`; with `command`, its first
/// element must name that binary (same path or same basename), and the rest precede `args`.
pub fn resolve(
    images: &BTreeMap<String, PathBuf>,
    image: &str,
    command: &[String],
    args: &[String],
) -> Result<Invocation, ImageError> {
    let binary = images
        .get(repository(image))
        .ok_or_else(|| ImageError::NotMapped(image.to_string()))?;
    let mut full_args = Vec::new();
    if let Some((first, rest)) = command.split_first() {
        let same_name = Path::new(first).file_name().is_some()
            && Path::new(first).file_name() == binary.file_name();
        if !(Path::new(first) == binary || same_name) {
            return Err(ImageError::CommandMismatch {
                command: first.clone(),
                binary: binary.clone(),
            });
        }
        full_args.extend(rest.iter().cloned());
    }
    full_args.extend(args.iter().cloned());
    Ok(Invocation {
        program: binary.clone(),
        args: full_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> BTreeMap<String, PathBuf> {
        BTreeMap::from([(
            "ghcr.io/graceful-dev/graceful-app".to_string(),
            PathBuf::from("/bin/graceful-app"),
        )])
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn repository_strips_tag_and_digest_but_not_registry_port() {
        assert_eq!(repository("ghcr.io/a/b:v1"), "ghcr.io/a/b");
        assert_eq!(repository("ghcr.io/a/b@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(repository("ghcr.io/a/b:v1@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(repository("localhost:5000/b"), "localhost:5000/b");
        assert_eq!(repository("localhost:5000/b:v2"), "localhost:5000/b");
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn entrypoint_with_args() {
        let inv = resolve(
            &images(),
            "ghcr.io/graceful-dev/graceful-app:v2",
            &[],
            &s(&["--x"]),
        )
        .unwrap();
        assert_eq!(inv.program, PathBuf::from("/bin/graceful-app"));
        assert_eq!(inv.args, s(&["--x"]));
    }

    #[test]
    fn command_naming_the_binary_prepends_its_args() {
        let inv = resolve(
            &images(),
            "ghcr.io/graceful-dev/graceful-app:v1",
            &s(&["graceful-app", "--a"]),
            &s(&["--b"]),
        )
        .unwrap();
        assert_eq!(inv.args, s(&["--a", "--b"]));
    }

    #[test]
    fn other_command_and_unmapped_image_fail_clearly() {
        let err = resolve(
            &images(),
            "ghcr.io/graceful-dev/graceful-app:v1",
            &s(&["sh"]),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.reason(), "CreateContainerError");
        let err = resolve(&images(), "nginx:1.27", &[], &[]).unwrap_err();
        assert_eq!(err.reason(), "ErrImagePull");
        assert!(err.message().contains("nginx:1.27"));
    }

    #[test]
    fn mapping_flag() {
        assert_eq!(
            parse_mapping("a/b=/x").unwrap(),
            ("a/b".to_string(), PathBuf::from("/x"))
        );
        assert!(parse_mapping("a/b").is_err());
        assert!(parse_mapping("=x").is_err());
    }
}
