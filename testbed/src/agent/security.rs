//! Which user a container runs as: `runAsUser`, `runAsGroup`, `supplementalGroups` and the
//! `runAsNonRoot` check, container settings over pod settings, as a runtime applies them.
//! Without a mapped image user, the image user is root (uid 0, gid 0).

use k8s_openapi::api::core::v1::{Container, PodSecurityContext};

/// The identity the process gets (None: stay root like the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Resolves the identity; Err is the kubelet's CreateContainerConfigError message.
pub fn identity(
    pod: Option<&PodSecurityContext>,
    container: &Container,
) -> Result<Option<Identity>, String> {
    let sc = container.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid.unwrap_or(0) == 0 {
        return Err(match uid {
            Some(_) => {
                "container's runAsUser breaks non-root policy (pod: runAsNonRoot and runAsUser 0)"
                    .into()
            }
            None => "container has runAsNonRoot and image will run as root".into(),
        });
    }
    let Some(uid) = uid else {
        return Ok(None);
    };
    let to_u32 =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"));
    let uid = to_u32(uid, "runAsUser")?;
    let gid = to_u32(gid.unwrap_or(0), "runAsGroup")?;
    let mut groups = vec![gid];
    for g in pod
        .and_then(|p| p.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
    {
        let g = to_u32(*g, "supplementalGroups")?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    if let Some(fs_group) = pod.and_then(|p| p.fs_group) {
        let g = to_u32(fs_group, "fsGroup")?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(Some(Identity { uid, gid, groups }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(sc: serde_json::Value) -> Container {
        serde_json::from_value(json!({"name": "c", "securityContext": sc})).unwrap()
    }

    fn pod(sc: serde_json::Value) -> PodSecurityContext {
        serde_json::from_value(sc).unwrap()
    }

    #[test]
    fn container_wins_over_pod() {
        let p = pod(json!({"runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [5]}));
        let id = identity(Some(&p), &container(json!({"runAsUser": 65532})))
            .unwrap()
            .unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 65532,
                gid: 1000,
                groups: vec![1000, 5]
            }
        );
    }

    #[test]
    fn no_user_stays_root_and_non_root_policy_is_enforced() {
        assert_eq!(identity(None, &container(json!({}))).unwrap(), None);
        let p = pod(json!({"runAsNonRoot": true}));
        assert!(
            identity(Some(&p), &container(json!({})))
                .unwrap_err()
                .contains("runAsNonRoot")
        );
        assert!(identity(Some(&p), &container(json!({"runAsUser": 0}))).is_err());
        assert!(
            identity(Some(&p), &container(json!({"runAsUser": 10})))
                .unwrap()
                .is_some()
        );
    }
}
