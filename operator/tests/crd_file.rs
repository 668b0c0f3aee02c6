//! crds/gracefulservice.yaml must be exactly what `crdgen` prints; regenerate it with
//! `cargo run -p graceful-operator --bin crdgen > crds/gracefulservice.yaml`.

use kube::CustomResourceExt;

#[test]
fn committed_crd_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/gracefulservice.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/gracefulservice.yaml is readable");
    let generated =
        serde_yaml::to_string(&graceful_operator::GracefulService::crd()).expect("CRD serializes");
    assert!(
        committed == generated,
        "crds/gracefulservice.yaml is stale: run `cargo run -p graceful-operator --bin crdgen > crds/gracefulservice.yaml`"
    );
}

#[test]
fn crd_has_scale_subresource_and_cel_rules() {
    let crd = serde_json::to_value(graceful_operator::GracefulService::crd()).expect("json");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let text = crd.to_string();
    assert_eq!(text.matches("x-kubernetes-validations").count(), 8);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "gsvc");
}
