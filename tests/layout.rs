//! The house rules of `src/`, checked: which folder may use which, and that what claims
//! to be pure does no I/O. A rule broken here is a design change to make on purpose
//! (and to describe in `src/lib.rs`), not by accident.
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/`-relative path and the code of each file, without comment lines.
fn files() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read");
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            (rel, code)
        })
        .collect()
}

/// The `crate::a::b::c` paths a file uses.
fn uses(code: &str) -> Vec<String> {
    let re = regex_lite::Regex::new(r"\bcrate::((?:\w+::)*\w+)").expect("regex");
    re.captures_iter(code).map(|c| c[1].to_string()).collect()
}

/// Which folders (top-level modules) a module may use; everything else is refused.
fn allowed(module: &str) -> &'static [&'static str] {
    match module {
        "crd" | "faults" => &["crd"],
        "cache" => &["cache"],
        "contract" => &["crd"],
        "telemetry" => &["crd", "telemetry"],
        "policy" => &["crd", "contract", "policy", "grant"],
        "aws" => &["crd", "contract", "faults", "telemetry", "policy", "aws"],
        "grant" => &[
            "cache",
            "crd",
            "contract",
            "faults",
            "telemetry",
            "policy",
            "aws",
            "grant",
        ],
        "controller" => &[
            "cache",
            "crd",
            "contract",
            "faults",
            "telemetry",
            "policy",
            "aws",
            "grant",
            "controller",
        ],
        "slack" => &["crd", "contract", "telemetry", "policy", "aws", "slack"],
        "run" => &[
            "cache",
            "crd",
            "contract",
            "faults",
            "telemetry",
            "policy",
            "aws",
            "grant",
            "controller",
            "slack",
            "run",
        ],
        // The kubectl plugin: a client of the cluster and STS, with the controller's own
        // decisions (policy), never its machinery (controller, slack, run, grant I/O).
        "plugin" => &["crd", "contract", "policy", "plugin"],
        _ => &[],
    }
}

/// The modules that are pure decisions: no clients, no clock-driven waiting, no
/// Kubernetes or AWS calls.
const PURE: &[&str] = &[
    "policy/",
    "grant/trust_policy/document.rs",
    "grant/trust_policy/session.rs",
    "grant/identity_center/rules.rs",
    "grant/iam_group/rules.rs",
    "contract.rs",
    "plugin/votes.rs",
    "plugin/render.rs",
    "plugin/timeline.rs",
    "plugin/access.rs",
];

/// What only I/O code uses.
const IO_MARKS: &[&str] = &[
    "aws_sdk_",
    "kube::api",
    "kube::Client",
    "kube::runtime",
    ".send()",
    "tokio::time::sleep",
    "reqwest::",
];

fn top(rel: &str) -> &str {
    rel.split(['/', '.']).next().unwrap_or_default()
}

#[test]
fn each_folder_uses_only_the_floors_it_may() {
    let mut broken = Vec::new();
    for (rel, code) in files() {
        let module = top(&rel);
        if matches!(module, "lib" | "main") {
            continue;
        }
        for used in uses(&code) {
            let folder = used.split("::").next().unwrap_or_default();
            // The crate root's one function, for every process and test.
            if folder == "install_crypto_provider" {
                continue;
            }
            if !allowed(module).contains(&folder) {
                broken.push(format!("src/{rel} uses crate::{used}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn pure_decisions_use_only_the_pure_parts_of_the_grant_methods() {
    let mut broken = Vec::new();
    let pure_grant = [
        "grant::trust_policy::document",
        "grant::trust_policy::session",
        "grant::identity_center::rules",
        "grant::iam_group::rules",
    ];
    for (rel, code) in files() {
        if !PURE.iter().any(|p| rel.starts_with(p)) {
            continue;
        }
        for used in uses(&code) {
            let io_module = ["aws", "telemetry", "controller", "slack", "run", "faults"]
                .contains(&used.split("::").next().unwrap_or_default());
            let impure_grant =
                used.starts_with("grant") && !pure_grant.iter().any(|p| used.starts_with(p));
            if io_module || impure_grant {
                broken.push(format!("src/{rel} (pure) uses crate::{used}"));
            }
        }
        for mark in IO_MARKS {
            if code.contains(mark) {
                broken.push(format!("src/{rel} (pure) does I/O: {mark}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_rules_are_not_empty() {
    // A scan that finds nothing checks nothing.
    let files = files();
    assert!(files.len() > 30, "{} files", files.len());
    let used: usize = files.iter().map(|(_, c)| uses(c).len()).sum();
    assert!(used > 100, "{used} crate paths");
    assert!(
        files
            .iter()
            .any(|(rel, _)| rel == "grant/identity_center/rules.rs")
    );
    assert!(
        uses("use crate::aws::sfn::{ExecutionState}; crate::grant::sweeper::x()")
            == vec!["aws::sfn", "grant::sweeper::x"]
    );
}
