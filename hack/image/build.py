#!/usr/bin/env python3
"""Builds container images without a registry or a Docker engine, as OCI archives that
`ctr images import` (containerd) loads.

  build.py aws-jit --binary target/release/aws-jit --ref localhost/aws-jit:dev --out aws-jit.tar
  build.py pause   --binary pause                   --ref localhost/aws-jit-pause:1 --out pause.tar

`aws-jit` is the Dockerfile's runtime stage, rebuilt: the Dockerfile is read for what
the stage adds (the binary's path, USER, ENTRYPOINT, CMD), and the base it names
(gcr.io/distroless/cc-debian12:nonroot) is rebuilt from this machine's files: the shared
libraries the binary links (found by ldd: glibc and libgcc, as in distroless/cc), the CA
bundle, /etc/passwd and /etc/group with nonroot:65532, /home/nonroot, /tmp, and
distroless's PATH, SSL_CERT_FILE and working directory. No shell, no package manager.
Any other base in the Dockerfile is refused: this script would not know its layout.
tests/image.rs compares the image with the Dockerfile.

`pause` is a one-file image for the kubelet's pod sandboxes (hack/node/pause.c).

The archive is reproducible: fixed timestamps, sorted entries, uncompressed layers.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

DISTROLESS = "gcr.io/distroless/cc-debian12:nonroot"
# What distroless's nonroot images set (their image config).
BASE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
]
BASE_WORKDIR = "/home/nonroot"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The libraries distroless/cc-debian12 has (Debian's libc6, libgcc-s1, libgomp1,
# libstdc++6, libssl3), by soname. A binary that needs any other would not start in the
# Dockerfile's image: refused here rather than copied from this machine.
DISTROLESS_CC_LIBS = {
    "ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libmvec.so.1", "libdl.so.2",
    "libpthread.so.0", "librt.so.1", "libresolv.so.2", "libutil.so.1", "libanl.so.1",
    "libnss_files.so.2", "libnss_dns.so.2", "libBrokenLocale.so.1", "libc_malloc_debug.so.0",
    "libgcc_s.so.1", "libgomp.so.1", "libstdc++.so.6", "libssl.so.3", "libcrypto.so.3",
}
# distroless's base files, as distroless writes them.
PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"
NSSWITCH = (
    "passwd:         files\n"
    "group:          files\n"
    "shadow:         files\n"
    "hosts:          files dns\n"
    "networks:       files\n"
    "protocols:      files\n"
    "services:       files\n"
    "ethers:         files\n"
    "rpc:            files\n"
)


class BuildError(Exception):
    pass


def runtime_stage(dockerfile):
    """The last stage of `dockerfile`: its base, the COPY --from destination, USER,
    ENTRYPOINT and CMD (exec form only)."""
    with open(dockerfile, encoding="utf-8") as f:
        text = f.read()
    # Join continuation lines; drop comments and blank lines.
    lines = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(line)
    stages = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append({"from": rest.split()[0], "copies": []})
        elif stages:
            stage = stages[-1]
            if word == "COPY":
                args = rest.split()
                flags = [a for a in args if a.startswith("--")]
                if any(not f.startswith("--from=") for f in flags):
                    raise BuildError(f"{dockerfile}: COPY {rest}: only --from= is rebuilt")
                sources = [a for a in args if not a.startswith("--")]
                stage["copies"].append({"flags": flags, "src": sources[:-1], "dest": sources[-1]})
            elif word in ("USER", "ENTRYPOINT", "CMD"):
                stage[word.lower()] = rest.strip()
            elif word in ("RUN", "ADD", "ENV", "WORKDIR", "VOLUME", "SHELL"):
                stage.setdefault("other", []).append(word)
    if not stages:
        raise BuildError(f"{dockerfile}: no FROM")
    stage = stages[-1]
    if stage["from"] != DISTROLESS:
        raise BuildError(f"{dockerfile}: the runtime stage is FROM {stage['from']}; "
                         f"this script rebuilds only {DISTROLESS}")
    if stage.get("other"):
        raise BuildError(f"{dockerfile}: the runtime stage has {', '.join(stage['other'])}, "
                         "which this script does not rebuild")
    if len(stage["copies"]) != 1:
        raise BuildError(f"{dockerfile}: the runtime stage must COPY exactly one file (the binary)")
    for key in ("user", "entrypoint", "cmd"):
        if key not in stage:
            raise BuildError(f"{dockerfile}: the runtime stage has no {key.upper()}")
    for key in ("entrypoint", "cmd"):
        try:
            stage[key] = json.loads(stage[key])
        except json.JSONDecodeError as e:
            raise BuildError(f"{dockerfile}: {key.upper()} is not in exec (JSON) form: {e}")
    return {
        "binary": stage["copies"][0]["dest"],
        "user": stage["user"],
        "entrypoint": stage["entrypoint"],
        "cmd": stage["cmd"],
    }


def shared_libraries(binary):
    """(path in the image, path here) of every library ldd says `binary` loads,
    the dynamic loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"ldd {binary}: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("linux-vdso"):
            continue
        m = re.match(r"^(\S+) => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if not m:
            raise BuildError(f"ldd {binary}: cannot read the line {line!r}")
        path = m.group(m.lastindex)
        if os.path.basename(path) not in DISTROLESS_CC_LIBS:
            raise BuildError(f"{binary} needs {path}, which {DISTROLESS} does not have")
        libs.append((path, os.path.realpath(path)))
    return libs


class Layer:
    """An uncompressed, reproducible layer tar."""

    def __init__(self):
        self.entries = {}

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self.entries[path.strip("/")] = ("dir", None, mode, uid, gid)

    def file(self, path, data, mode=0o644, uid=0, gid=0):
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), ("dir", None, 0o755, 0, 0))
        self.entries[path] = ("file", data, mode, uid, gid)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode, uid, gid = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 0
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def aws_jit_layer(binary, stage):
    layer = Layer()
    for path in ("etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/lib", "lib", "lib64", "bin"):
        layer.dir(path)
    layer.dir("tmp", 0o1777)
    layer.dir("root", 0o700)
    layer.dir("home", 0o755)
    layer.dir("home/nonroot", 0o700, 65532, 65532)
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", NSSWITCH.encode())
    layer.file(CA_BUNDLE, read(CA_BUNDLE))
    for in_image, here in shared_libraries(binary):
        layer.file(in_image, read(here), 0o755)
    layer.file(stage["binary"], read(binary), 0o755)
    return layer


def pause_layer(binary):
    layer = Layer()
    layer.file("pause", read(binary), 0o755)
    return layer


def blob(blobs, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_archive(out, ref, layer, config):
    """An OCI image layout in a tar: one manifest, one layer, `ref` as its name."""
    blobs = {}
    layer_tar = layer.tar()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/image/build.py", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(blobs, json.dumps(image_config, sort_keys=True).encode(),
                       "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(blobs, layer_tar, "application/vnd.oci.image.layer.v1.tar")],
    }
    desc = blob(blobs, json.dumps(manifest, sort_keys=True).encode(),
                "application/vnd.oci.image.manifest.v1+json")
    desc["platform"] = {"architecture": "amd64", "os": "linux"}
    desc["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [desc]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True).encode()}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["aws-jit", "pause"])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--ref", required=True, help="the image's name, e.g. localhost/aws-jit:dev")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dockerfile", default=os.path.join(os.path.dirname(__file__), "../../Dockerfile"))
    args = parser.parse_args()
    try:
        if os.uname().machine != "x86_64":
            raise BuildError(f"this script builds linux/amd64 images; this machine is {os.uname().machine}")
        if not os.path.isfile(args.binary):
            raise BuildError(f"no binary at {args.binary}")
        if args.kind == "aws-jit":
            stage = runtime_stage(args.dockerfile)
            layer = aws_jit_layer(args.binary, stage)
            config = {"User": stage["user"], "Entrypoint": stage["entrypoint"], "Cmd": stage["cmd"],
                      "Env": BASE_ENV, "WorkingDir": BASE_WORKDIR}
        else:
            layer = pause_layer(args.binary)
            config = {"Entrypoint": ["/pause"], "User": "65535:65535"}
        write_archive(args.out, args.ref, layer, config)
    except (BuildError, OSError) as e:
        print(f"build.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
