//! The checked-in CRDs are exactly what the Rust types generate.

#[test]
fn checked_in_crds_match_the_code() {
    let generated = aws_jit::crd::to_yaml().expect("CRDs render as YAML");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/aws-jit.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/aws-jit.yaml is readable");
    assert!(
        generated == checked_in,
        "crds/aws-jit.yaml is out of date: run `cargo run -- crdgen > crds/aws-jit.yaml`"
    );
}

#[test]
fn crds_carry_the_cel_rules_the_apiserver_enforces() {
    let yaml = aws_jit::crd::to_yaml().expect("CRDs render as YAML");
    for rule in [
        "self == oldSelf",
        "duration(self) > duration('0s')",
        "self >= 1",
        "duration(self.defaultDuration) <= duration(self.maxDuration)",
    ] {
        assert!(yaml.contains(rule), "missing CEL rule {rule:?}");
    }
}
