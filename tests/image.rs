//! The image `hack/image/build.py` builds (what the node tests run, tests/node/) is the
//! Dockerfile's runtime stage: the same entrypoint, command, user and binary path, and
//! the files of the base it names (gcr.io/distroless/cc-debian12:nonroot) that the
//! binary needs, nothing more. Read here from the Dockerfile and from the archive, apart
//! from the builder's own reading of them.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BINARY: &str = env!("CARGO_BIN_EXE_aws-jit");

/// One entry of the image's single layer.
struct Entry {
    mode: u32,
    uid: u64,
    gid: u64,
    dir: bool,
    data: Vec<u8>,
}

struct Image {
    config: Value,
    files: BTreeMap<String, Entry>,
}

fn build(dockerfile: &Path, out: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(format!("{ROOT}/hack/image/build.py"))
        .args([
            "aws-jit",
            "--binary",
            BINARY,
            "--ref",
            "localhost/aws-jit:layout",
        ])
        .arg("--out")
        .arg(out)
        .arg("--dockerfile")
        .arg(dockerfile)
        .output()
        .expect("run python3 hack/image/build.py")
}

fn read_image(archive: &Path) -> Image {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("open archive"));
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        blobs.insert(path, data);
    }
    let json = |name: &str| -> Value {
        serde_json::from_slice(blobs.get(name).unwrap_or_else(|| panic!("no {name}")))
            .expect("json")
    };
    let blob = |digest: &Value| -> &Vec<u8> {
        let digest = digest.as_str().expect("digest");
        let hex = digest.strip_prefix("sha256:").expect("sha256");
        blobs
            .get(&format!("blobs/sha256/{hex}"))
            .unwrap_or_else(|| panic!("no blob {digest}"))
    };
    let index = json("index.json");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest: Value = serde_json::from_slice(blob(&manifests[0]["digest"])).expect("manifest");
    let config: Value =
        serde_json::from_slice(blob(&manifest["config"]["digest"])).expect("config");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let mut files = BTreeMap::new();
    let mut layer = tar::Archive::new(&blob(&layers[0]["digest"])[..]);
    for entry in layer.entries().expect("layer entries") {
        let mut entry = entry.expect("layer entry");
        let path = format!("/{}", entry.path().expect("path").to_string_lossy());
        let path = path.trim_end_matches('/').to_owned();
        let header = entry.header();
        let (mode, uid, gid) = (
            header.mode().expect("mode"),
            header.uid().expect("uid"),
            header.gid().expect("gid"),
        );
        let dir = header.entry_type().is_dir();
        assert!(
            dir || header.entry_type().is_file(),
            "{path}: only files and directories"
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        files.insert(
            path,
            Entry {
                mode,
                uid,
                gid,
                dir,
                data,
            },
        );
    }
    Image { config, files }
}

/// The last stage of the Dockerfile: instruction -> argument, and its COPY lines.
fn runtime_stage() -> (String, BTreeMap<String, String>, Vec<String>) {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let from = lines[start]
        .split_whitespace()
        .nth(1)
        .expect("FROM image")
        .to_owned();
    let mut instructions = BTreeMap::new();
    let mut copies = Vec::new();
    for line in &lines[start + 1..] {
        let (word, rest) = line.split_once(' ').expect("instruction and argument");
        if word == "COPY" {
            copies.push(rest.to_owned());
        } else {
            instructions.insert(word.to_owned(), rest.trim().to_owned());
        }
    }
    (from, instructions, copies)
}

fn built() -> (Image, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("aws-jit.tar");
    let said = build(Path::new(&format!("{ROOT}/Dockerfile")), &out);
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    (read_image(&out), dir)
}

#[test]
fn the_image_has_the_dockerfiles_entrypoint_user_and_binary() {
    let (from, instructions, copies) = runtime_stage();
    // The base whose layout build.py rebuilds; another base needs the builder changed.
    assert_eq!(from, "gcr.io/distroless/cc-debian12:nonroot");
    assert_eq!(
        instructions.keys().collect::<Vec<_>>(),
        ["CMD", "ENTRYPOINT", "USER"]
    );
    let (image, _dir) = built();
    let config = &image.config["config"];
    let exec_form = |key: &str| -> Value { serde_json::from_str(&instructions[key]).expect(key) };
    assert_eq!(config["Entrypoint"], exec_form("ENTRYPOINT"));
    assert_eq!(config["Cmd"], exec_form("CMD"));
    assert_eq!(config["User"], instructions["USER"]);
    assert_eq!(config["User"], "65532:65532", "numeric, for runAsNonRoot");
    // distroless's own settings.
    assert_eq!(config["WorkingDir"], "/home/nonroot");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        ],
        "distroless's environment"
    );
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");

    // The one COPY: the builder's binary at the entrypoint's path, executable.
    assert_eq!(copies.len(), 1, "{copies:?}");
    let dest = copies[0]
        .split_whitespace()
        .last()
        .expect("COPY destination");
    assert_eq!(exec_form("ENTRYPOINT")[0], dest);
    let binary = &image.files[dest];
    assert_eq!(binary.mode & 0o777, 0o755);
    assert!(
        binary.data == std::fs::read(BINARY).expect("read binary"),
        "{dest} is not the binary it was given"
    );
}

#[test]
fn the_image_has_what_distroless_cc_gives_the_binary_and_no_shell() {
    let (image, _dir) = built();
    let file = |path: &str| -> &Entry {
        image
            .files
            .get(path)
            .unwrap_or_else(|| panic!("no {path} in the image"))
    };
    let passwd = String::from_utf8(file("/etc/passwd").data.clone()).expect("utf-8");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = String::from_utf8(file("/etc/group").data.clone()).expect("utf-8");
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    let home = file("/home/nonroot");
    assert!(home.dir && home.uid == 65532 && home.gid == 65532);
    let tmp = file("/tmp");
    assert!(tmp.dir && tmp.mode & 0o7777 == 0o1777);
    assert!(
        String::from_utf8_lossy(&file("/etc/ssl/certs/ca-certificates.crt").data)
            .contains("-----BEGIN CERTIFICATE-----")
    );
    // Every library the binary names (ELF DT_NEEDED) and its loader, where the loader
    // looks (readelf, not the builder's ldd).
    let out = Command::new("readelf")
        .args(["--dynamic", "--program-headers", BINARY])
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let interpreter = text
        .lines()
        .find_map(|l| l.split_once("Requesting program interpreter: "))
        .map(|(_, rest)| rest.trim_end_matches(']').to_owned())
        .expect("a dynamic binary names its loader");
    assert!(image.files.contains_key(&interpreter), "no {interpreter}");
    let needed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once("Shared library: [")?.1.split_once(']'))
        .map(|(lib, _)| lib)
        .collect();
    assert!(!needed.is_empty(), "{text}");
    for lib in &needed {
        assert!(
            [
                "/lib/x86_64-linux-gnu",
                "/usr/lib/x86_64-linux-gnu",
                "/lib64"
            ]
            .iter()
            .any(|dir| image.files.contains_key(&format!("{dir}/{lib}"))),
            "the binary needs {lib}, which the image lacks"
        );
    }
    // Nothing to run but the binary and its libraries: no shell, no package manager.
    for (path, entry) in &image.files {
        if entry.dir || entry.mode & 0o111 == 0 {
            continue;
        }
        let ok = path == "/aws-jit"
            || path == &interpreter
            || needed.iter().any(|lib| path.ends_with(&format!("/{lib}")));
        assert!(ok, "{path} is executable in the image");
    }
    assert!(!image.files.contains_key("/bin/sh"));
}

/// The layer, unpacked, runs the binary as 65532 with nothing of this machine's but
/// the kernel (chroot): the libraries copied are all it needs.
#[test]
fn the_images_files_alone_run_the_binary_as_nonroot() {
    let (image, dir) = built();
    let root = dir.path().join("rootfs");
    for (path, entry) in &image.files {
        let target = root.join(path.trim_start_matches('/'));
        if entry.dir {
            std::fs::create_dir_all(&target).expect("mkdir");
        } else {
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(&target, &entry.data).expect("write");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(entry.mode))
            .expect("chmod");
    }
    let out = Command::new("/usr/sbin/chroot")
        .arg("--userspec=65532:65532")
        .arg(&root)
        .args(["/aws-jit", "drain", "--help"])
        .env_clear()
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "the binary did not run from the image's files alone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drain"));
}

/// A Dockerfile the builder could not rebuild faithfully is refused, with the reason.
#[test]
fn the_builder_refuses_a_runtime_stage_it_does_not_know() {
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).expect("Dockerfile");
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&str, String, &str); 5] = [
        (
            "another base",
            dockerfile.replace(
                "gcr.io/distroless/cc-debian12:nonroot",
                "gcr.io/distroless/static-debian12:nonroot",
            ),
            "this script rebuilds only gcr.io/distroless/cc-debian12:nonroot",
        ),
        (
            "a RUN in the runtime stage",
            dockerfile.replace("USER 65532:65532", "RUN true\nUSER 65532:65532"),
            "has RUN",
        ),
        (
            "a shell-form entrypoint",
            dockerfile.replace(r#"ENTRYPOINT ["/aws-jit"]"#, "ENTRYPOINT /aws-jit"),
            "ENTRYPOINT is not in exec (JSON) form",
        ),
        (
            "no USER",
            dockerfile.replace("USER 65532:65532", ""),
            "has no USER",
        ),
        (
            "a COPY flag it does not apply",
            dockerfile.replace(
                "COPY --from=builder /out/aws-jit /aws-jit",
                "COPY --from=builder --chown=65532:65532 /out/aws-jit /aws-jit",
            ),
            "only --from= is rebuilt",
        ),
    ];
    for (what, text, says) in cases {
        assert_ne!(text, dockerfile, "{what}: the case changed nothing");
        let path: PathBuf = dir.path().join("Dockerfile");
        std::fs::write(&path, text).expect("write");
        let out = build(&path, &dir.path().join("out.tar"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: built");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(
            !dir.path().join("out.tar").exists(),
            "{what}: an archive was left"
        );
    }
}
