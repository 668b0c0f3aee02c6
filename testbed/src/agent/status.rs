//! What the agent knows about a pod, and the pod status it reports (pure): phase, addresses,
//! conditions and container states the way a kubelet derives them.

use std::net::Ipv4Addr;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// A container's current state, as in `containerStatuses[].state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": time(*started_at)}}),
            State::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "finishedAt": time(*finished_at)});
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                if let Some(s) = started_at {
                    t["startedAt"] = json!(time(*s));
                }
                json!({"terminated": t})
            }
        }
    }
}

/// One container as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last_state: Option<State>,
    pub ready: bool,
    pub restart_count: i32,
    /// Whether the container ever started (a never-started container keeps the pod Pending).
    pub ever_started: bool,
}

/// The pod as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub pod_ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    pub restart_policy: Option<String>,
    pub containers: Vec<ContainerView>,
    /// When the Ready condition last changed.
    pub ready_since: Timestamp,
}

impl PodView {
    pub fn all_ready(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }
}

/// Kubernetes time format (RFC 3339, whole seconds).
pub fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The pod phase, following the kubelet: Pending until every container started once; Running
/// while any runs or will restart; Succeeded/Failed once all terminated for good.
pub fn phase(view: &PodView) -> &'static str {
    if view.containers.iter().any(|c| !c.ever_started) {
        return "Pending";
    }
    let all_terminated = view
        .containers
        .iter()
        .all(|c| matches!(c.state, State::Terminated { .. }));
    if !all_terminated {
        return "Running";
    }
    let failed = view
        .containers
        .iter()
        .any(|c| matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0));
    match view.restart_policy.as_deref().unwrap_or("Always") {
        "Never" if failed => "Failed",
        "Never" => "Succeeded",
        "OnFailure" if !failed => "Succeeded",
        _ => "Running",
    }
}

/// The `status` object to merge-patch onto the pod.
pub fn pod_status(view: &PodView) -> Value {
    let ready = if view.all_ready() { "True" } else { "False" };
    let since = time(view.start_time);
    let ready_since = time(view.ready_since);
    let unready_reason = (ready == "False").then_some("ContainersNotReady");
    let condition = |type_: &str, status: &str, at: &str, reason: Option<&str>| {
        let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": at});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    let sandbox = if view.pod_ip.is_some() {
        "True"
    } else {
        "False"
    };
    let mut status = json!({
        "phase": phase(view),
        "hostIP": view.host_ip.to_string(),
        "hostIPs": [{"ip": view.host_ip.to_string()}],
        "startTime": since,
        "conditions": [
            condition("PodReadyToStartContainers", sandbox, &since, None),
            condition("Initialized", "True", &since, None),
            condition("Ready", ready, &ready_since, unready_reason),
            condition("ContainersReady", ready, &ready_since, unready_reason),
            condition("PodScheduled", "True", &since, None),
        ],
        "containerStatuses": view.containers.iter().map(container_status).collect::<Vec<_>>(),
    });
    if let Some(ip) = view.pod_ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

fn container_status(c: &ContainerView) -> Value {
    let mut s = json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "state": c.state.to_json(),
        "lastState": c.last_state.as_ref().map(State::to_json).unwrap_or_else(|| json!({})),
        "ready": c.ready,
        "started": matches!(c.state, State::Running { .. }),
        "restartCount": c.restart_count,
    });
    if let Some(id) = &c.container_id {
        s["containerID"] = json!(id);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: State, ever_started: bool, ready: bool) -> ContainerView {
        ContainerView {
            name: "app".into(),
            image: "img:v1".into(),
            image_id: "img@x".into(),
            container_id: None,
            state,
            last_state: None,
            ready,
            restart_count: 0,
            ever_started,
        }
    }

    fn view(containers: Vec<ContainerView>, policy: Option<&str>) -> PodView {
        PodView {
            pod_ip: Some(Ipv4Addr::new(10, 88, 0, 2)),
            host_ip: Ipv4Addr::new(10, 88, 0, 1),
            start_time: Timestamp::UNIX_EPOCH,
            restart_policy: policy.map(str::to_string),
            containers,
            ready_since: Timestamp::UNIX_EPOCH,
        }
    }

    fn exited(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            signal: None,
            reason: "Error".into(),
            started_at: None,
            finished_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn phases() {
        let waiting = State::waiting("ErrImagePull", None);
        let running = State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(
            phase(&view(vec![container(waiting.clone(), false, false)], None)),
            "Pending"
        );
        assert_eq!(
            phase(&view(vec![container(running, true, true)], None)),
            "Running"
        );
        assert_eq!(
            phase(&view(vec![container(waiting, true, false)], None)),
            "Running"
        );
        assert_eq!(
            phase(&view(
                vec![container(exited(1), true, false)],
                Some("Never")
            )),
            "Failed"
        );
        assert_eq!(
            phase(&view(
                vec![container(exited(0), true, false)],
                Some("OnFailure")
            )),
            "Succeeded"
        );
        assert_eq!(
            phase(&view(vec![container(exited(0), true, false)], None)),
            "Running"
        );
    }

    #[test]
    fn ready_conditions_follow_containers() {
        let running = State::Running {
            started_at: Timestamp::UNIX_EPOCH,
        };
        let s = pod_status(&view(vec![container(running.clone(), true, true)], None));
        let cond = |s: &Value, t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(s["podIP"], "10.88.0.2");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "1970-01-01T00:00:00Z"
        );
        let s = pod_status(&view(vec![container(running, true, false)], None));
        assert_eq!(cond(&s, "ContainersReady"), "False");
    }
}
