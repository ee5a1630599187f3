//! The images the node runs, built by `hack/image/build.py` (no registry, no Docker).
use std::path::Path;
use std::process::Command;

const BUILDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/image/build.py");

/// `build.py KIND --binary BINARY --ref REFERENCE --out OUT`; panics with its message.
pub fn build(kind: &str, binary: &Path, reference: &str, out: &Path) {
    let said = Command::new("python3")
        .arg(BUILDER)
        .arg(kind)
        .arg("--binary")
        .arg(binary)
        .args(["--ref", reference])
        .arg("--out")
        .arg(out)
        .output()
        .expect("run python3 hack/image/build.py");
    assert!(
        said.status.success(),
        "hack/image/build.py {kind}: {}",
        String::from_utf8_lossy(&said.stderr)
    );
}
