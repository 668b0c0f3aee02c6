//! crds/gracefulservice.yaml must be exactly what `crdgen` prints; regenerate it with
//! `cargo run -p graceful-operator --bin crdgen > crds/gracefulservice.yaml`.

#[test]
fn committed_crd_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/gracefulservice.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/gracefulservice.yaml is readable");
    let generated =
        serde_yaml::to_string(&graceful_operator::crd::definition().expect("CRD builds"))
            .expect("CRD serializes");
    assert!(
        committed == generated,
        "crds/gracefulservice.yaml is stale: run `cargo run -p graceful-operator --bin crdgen > crds/gracefulservice.yaml`"
    );
}

#[test]
fn crd_has_scale_subresource_and_cel_rules() {
    let crd = serde_json::to_value(graceful_operator::crd::definition().expect("CRD builds"))
        .expect("json");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let text = crd.to_string();
    assert_eq!(text.matches("x-kubernetes-validations").count(), 13);
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "gsvc");
}

#[test]
fn crd_fits_client_side_kubectl_apply() {
    let crd = graceful_operator::crd::definition().expect("CRD builds");
    let bytes = serde_json::to_vec(&crd).expect("json").len();
    assert!(
        bytes < graceful_operator::crd::MAX_CRD_JSON_BYTES,
        "the CRD is {bytes} bytes of JSON: `kubectl apply` (client-side) cannot store it"
    );
}

#[test]
fn the_template_keeps_its_own_field_descriptions() {
    let crd = serde_json::to_value(graceful_operator::crd::definition().expect("CRD builds"))
        .expect("json");
    let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/template/properties/spec/properties";
    let fields = crd.pointer(spec).expect("template.spec fields");
    for name in [
        "containers",
        "volumes",
        "securityContext",
        "serviceAccountName",
    ] {
        assert!(
            fields[name]["description"].is_string(),
            "{name} keeps its description"
        );
    }
    let nested = &fields["containers"]["items"]["properties"]["image"];
    assert!(nested.is_object() && nested.get("description").is_none());
}
