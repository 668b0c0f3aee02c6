//! The table of specs the API server must refuse, each with the message it must give.

use anyhow::{Result, bail};
use graceful_operator::GracefulService;
use graceful_operator::planner::STEP_SIZE_RULE;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

/// (case, spec, text the refusal must contain)
fn cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "ports equal",
            json!({"ports": {"main": 8080, "admin": 8080}}),
            "ports.main and ports.admin must differ",
        ),
        (
            "default admin port reused as main",
            json!({"ports": {"main": 9090}}),
            "ports.main and ports.admin must differ",
        ),
        (
            "main port 0",
            json!({"ports": {"main": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            "admin port 70000",
            json!({"ports": {"admin": 70000}}),
            "should be less than or equal to 65535",
        ),
        (
            "grace below drain + request",
            json!({"shutdown": {"drainDelaySeconds": 20, "maxRequestSeconds": 15, "terminationGracePeriodSeconds": 30}}),
            "shutdown.terminationGracePeriodSeconds must exceed drainDelaySeconds + maxRequestSeconds",
        ),
        (
            "grace equal to drain + request",
            json!({"shutdown": {"drainDelaySeconds": 5, "maxRequestSeconds": 10, "terminationGracePeriodSeconds": 15}}),
            "shutdown.terminationGracePeriodSeconds must exceed drainDelaySeconds + maxRequestSeconds",
        ),
        (
            "grace default with long drain",
            json!({"shutdown": {"drainDelaySeconds": 25}}),
            "shutdown.terminationGracePeriodSeconds must exceed drainDelaySeconds + maxRequestSeconds",
        ),
        (
            "negative drain delay",
            json!({"shutdown": {"drainDelaySeconds": -1}}),
            "should be greater than or equal to 0",
        ),
        (
            "maxRequestSeconds 0",
            json!({"shutdown": {"maxRequestSeconds": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            "surge and unavailable both 0",
            json!({"rollout": {"maxSurge": 0, "maxUnavailable": 0}}),
            "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
        ),
        (
            "surge 0% and unavailable 0",
            json!({"rollout": {"maxSurge": "0%", "maxUnavailable": 0}}),
            "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
        ),
        (
            "surge 0 and unavailable 0%",
            json!({"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}),
            "rollout.maxSurge and rollout.maxUnavailable must not both be 0",
        ),
        (
            "nodePort with ClusterIP",
            json!({"service": {"nodePort": 30080}}),
            "service.nodePort is only allowed with service.type NodePort",
        ),
        (
            "nodePort below range",
            json!({"service": {"type": "NodePort", "nodePort": 8080}}),
            "should be greater than or equal to 30000",
        ),
        (
            "nodePort above range",
            json!({"service": {"type": "NodePort", "nodePort": 40000}}),
            "should be less than or equal to 32767",
        ),
        (
            "service type LoadBalancer",
            json!({"service": {"type": "LoadBalancer"}}),
            "Unsupported value: \"LoadBalancer\"",
        ),
        (
            "preStop path without slash",
            json!({"paths": {"preStop": "prestop"}}),
            "paths.preStop must start with '/'",
        ),
        (
            "readiness path without slash",
            json!({"paths": {"readiness": "readyz"}}),
            "paths.readiness must start with '/'",
        ),
        (
            "liveness path without slash",
            json!({"paths": {"liveness": "livez"}}),
            "paths.liveness must start with '/'",
        ),
        (
            "stepSize 0",
            json!({"scaleDown": {"stepSize": 0}}),
            STEP_SIZE_RULE,
        ),
        (
            "stepSize -3",
            json!({"scaleDown": {"stepSize": -3}}),
            STEP_SIZE_RULE,
        ),
        (
            "stepSize 0%",
            json!({"scaleDown": {"stepSize": "0%"}}),
            STEP_SIZE_RULE,
        ),
        (
            "stepSize 150%",
            json!({"scaleDown": {"stepSize": "150%"}}),
            STEP_SIZE_RULE,
        ),
        (
            "stepSize a number in a string",
            json!({"scaleDown": {"stepSize": "10"}}),
            STEP_SIZE_RULE,
        ),
        (
            "stepTimeoutSeconds 0",
            json!({"scaleDown": {"stepTimeoutSeconds": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            "negative replicas",
            json!({"replicas": -1}),
            "should be greater than or equal to 0",
        ),
        (
            "empty image",
            json!({"image": ""}),
            "should be at least 1 chars long",
        ),
        (
            "template sets the grace period",
            json!({"template": {"spec": {"terminationGracePeriodSeconds": 5}}}),
            "template.spec.terminationGracePeriodSeconds is owned: set spec.shutdown.terminationGracePeriodSeconds",
        ),
        (
            "template app container with a preStop hook",
            json!({"template": {"spec": {"containers": [{"name": "app", "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}]}}}),
            "template container 'app' must not set lifecycle or probes",
        ),
        (
            "template app container with a readiness probe",
            json!({"template": {"spec": {"containers": [{"name": "app", "readinessProbe": {"tcpSocket": {"port": 8080}}}]}}}),
            "template container 'app' must not set lifecycle or probes",
        ),
        (
            "template app container with an image",
            json!({"template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}}}),
            "template container 'app' must not set image, args, env or ports",
        ),
        (
            "template extra container without an image",
            json!({"template": {"spec": {"containers": [{"name": "side"}]}}}),
            "template containers other than 'app' need an image",
        ),
        (
            "template takes the selector label",
            json!({"template": {"metadata": {"labels": {"graceful.dev/service": "x"}}}}),
            "template.metadata.labels must not set graceful.dev/service",
        ),
        (
            "template sets the deletion cost",
            json!({"template": {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "1"}}}}),
            "must not set controller.kubernetes.io/pod-deletion-cost",
        ),
        (
            "resources twice",
            json!({"resources": {"limits": {"cpu": "1"}}, "template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}]}}}),
            "set the app container's resources in spec.resources or in template container 'app', not both",
        ),
        (
            "shutdown mode unknown",
            json!({"shutdown": {"mode": "Exec"}}),
            "Unsupported value: \"Exec\"",
        ),
        (
            "proxy port on the main port",
            json!({"ports": {"proxy": 8080}}),
            "ports.proxy must differ from ports.main and ports.admin",
        ),
        (
            "readiness period 0",
            json!({"probes": {"readiness": {"periodSeconds": 0}}}),
            "should be greater than or equal to 1",
        ),
    ]
}

/// Creates every case (server-side dry run is not used: a real create must fail), checks the
/// refusal message, and checks a valid control spec is accepted so the table can fail.
pub async fn refused_by_schema(client: &kube::Client, ns: &str) -> Result<()> {
    let resource = ApiResource::erase::<GracefulService>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object = |name: &str, spec: &Value| -> Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "graceful.dev/v1alpha1",
            "kind": "GracefulService",
            "metadata": {"name": name},
            "spec": spec,
        }))?)
    };
    let table = cases();
    let mut failures = Vec::new();
    for (i, (case, spec, expected)) in table.iter().enumerate() {
        match api
            .create(&PostParams::default(), &object(&format!("bad-{i}"), spec)?)
            .await
        {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(expected) => {}
            Err(other) => failures.push(format!("{case}: wrong refusal {other}")),
        }
    }
    eprintln!(
        "invalid spec cases tried: {} (refused as expected: {})",
        table.len(),
        table.len() - failures.len()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} cases wrong:\n{}",
            failures.len(),
            table.len(),
            failures.join("\n")
        );
    }
    // Controls: the same rules accept valid neighbours of the refused cases.
    let valid = [
        json!({}),
        json!({"shutdown": {"drainDelaySeconds": 5, "maxRequestSeconds": 10, "terminationGracePeriodSeconds": 16}}),
        json!({"rollout": {"maxSurge": 0, "maxUnavailable": 1}}),
        json!({"service": {"type": "NodePort", "nodePort": 30081}}),
        json!({"scaleDown": {"stepSize": 3}}),
        json!({"scaleDown": {"stepSize": "10%"}}),
        json!({"scaleDown": {"stepSize": "100%"}}),
    ];
    for (i, spec) in valid.iter().enumerate() {
        api.create(&PostParams::default(), &object(&format!("good-{i}"), spec)?)
            .await?;
    }
    Ok(())
}
