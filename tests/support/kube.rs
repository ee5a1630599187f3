//! A real Kubernetes control plane for the tests: etcd + kube-apiserver, the binaries
//! built from Go modules by `hack/ensure-tools.sh` (found through `AWS_JIT_BIN_DIR`).
//!
//! One per test process, in a temp dir removed at exit (set `AWS_JIT_KEEP_STACK=1` to
//! keep it, with its logs). TLS with a CA of its own, static-token users (see [`User`]),
//! RBAC, the default admission plugins (ValidatingAdmissionPolicy included), and
//! service-account signing so `kubectl create token` works.
//!
//! No kube-controller-manager runs: nothing garbage-collects by owner reference,
//! deleted namespaces stay `Terminating`, and no `default` ServiceAccount appears in a
//! new namespace. Each test works in a namespace of its own and never deletes it.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::procs;

/// From the first process started to an apiserver that serves requests. Generous: the
/// machines that run the tests are often busy compiling.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The static-token users of the stack. Other code depends on these exact names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum User {
    /// `admin`, group `system:masters`.
    Admin,
    /// The operator's service account `aws-jit-system/aws-jit`.
    Operator,
    /// Requester, group `developers`.
    Alice,
    /// Requester, group `developers`.
    Bob,
    /// Approver, group `sre`.
    Carol,
    /// Approver, group `sre`.
    Dave,
    /// Approver, group `sre`.
    Erin,
    /// Argo CD's application controller service account `argocd/argocd-application-controller`.
    GitOps,
    /// The Slack relay's service account `aws-jit-system/aws-jit-relay`.
    Relay,
    /// A namespace owner, group `team-leads`: no aws-jit role of its own; tests bind it
    /// a wildcard Role (`*` on `*` in `*`) in their namespace.
    Olivia,
}

impl User {
    pub const ALL: [User; 10] = [
        User::Admin,
        User::Operator,
        User::Alice,
        User::Bob,
        User::Carol,
        User::Dave,
        User::Erin,
        User::GitOps,
        User::Relay,
        User::Olivia,
    ];

    /// The username the apiserver authenticates.
    pub fn name(&self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Operator => "system:serviceaccount:aws-jit-system:aws-jit",
            User::Alice => "alice",
            User::Bob => "bob",
            User::Carol => "carol",
            User::Dave => "dave",
            User::Erin => "erin",
            User::GitOps => "system:serviceaccount:argocd:argocd-application-controller",
            User::Relay => "system:serviceaccount:aws-jit-system:aws-jit-relay",
            User::Olivia => "olivia",
        }
    }

    /// The groups of the static token (the apiserver adds `system:authenticated` to all).
    pub fn groups(&self) -> &'static [&'static str] {
        match self {
            User::Admin => &["system:masters"],
            User::Operator => &[
                "system:serviceaccounts",
                "system:serviceaccounts:aws-jit-system",
                "system:authenticated",
            ],
            User::Alice | User::Bob => &["developers"],
            User::Carol | User::Dave | User::Erin => &["sre"],
            User::GitOps => &["system:serviceaccounts", "system:serviceaccounts:argocd"],
            User::Relay => &[
                "system:serviceaccounts",
                "system:serviceaccounts:aws-jit-system",
                "system:authenticated",
            ],
            User::Olivia => &["team-leads"],
        }
    }

    /// A file-name-safe short name.
    pub fn key(&self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Operator => "operator",
            User::Alice => "alice",
            User::Bob => "bob",
            User::Carol => "carol",
            User::Dave => "dave",
            User::Erin => "erin",
            User::GitOps => "gitops",
            User::Relay => "relay",
            User::Olivia => "olivia",
        }
    }
}

/// The running control plane. Plain data: clients are built per test.
pub struct KubeStack {
    dir: PathBuf,
    bin_dir: PathBuf,
    server: String,
    /// Bearer tokens, in the order of [`User::ALL`].
    tokens: Vec<String>,
    /// The node's components (kubelet, scheduler, controller manager), when
    /// [`Options::node`] is set: (username, token).
    components: Vec<(String, String)>,
}

/// How the apiserver is reached and what it serves. The default is the fast tests'
/// stack: loopback, a free port, RBAC, no node.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where it listens and what it advertises (in its certificate too).
    pub address: Ipv4Addr,
    /// A fixed port (443 for a node's pods, which reach it at the `kubernetes` Service's
    /// IP and port); `None` picks a free one.
    pub port: Option<u16>,
    /// `--service-cluster-ip-range`: its first address is the `kubernetes` Service's.
    pub service_cidr: &'static str,
    /// The name of a node that will register: adds users for its kubelet
    /// (`system:node:<name>`), `system:kube-scheduler` and
    /// `system:kube-controller-manager`, the Node authorizer before RBAC, the
    /// NodeRestriction admission plugin, and a client certificate the apiserver shows the
    /// kubelet (for logs and exec).
    pub node: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            address: Ipv4Addr::LOCALHOST,
            port: None,
            service_cidr: "10.0.0.0/24",
            node: None,
        }
    }
}

/// The usernames of a node's components, in the order [`KubeStack::component_kubeconfig`]
/// knows them.
fn component_users(node: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("system:node:{node}"), "system:nodes"),
        ("system:kube-scheduler".to_owned(), ""),
        ("system:kube-controller-manager".to_owned(), ""),
    ]
}

impl KubeStack {
    /// Starts etcd and kube-apiserver and waits until the apiserver is ready. Panics with
    /// the reason (and the tail of the failing process's log) when that cannot happen.
    /// Blocking; may be called from inside a tokio runtime (the work runs on a thread of
    /// its own, which drives a small runtime of its own for the readiness probe).
    pub fn start() -> KubeStack {
        KubeStack::start_with(Options::default())
    }

    /// [`KubeStack::start`] with `options`.
    pub fn start_with(options: Options) -> KubeStack {
        std::thread::Builder::new()
            .name("kube-stack-start".into())
            .spawn(move || KubeStack::start_here(&options))
            .expect("spawn the kube stack start thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn start_here(options: &Options) -> KubeStack {
        super::install_crypto_provider();
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let bin_dir = PathBuf::from(std::env::var_os("AWS_JIT_BIN_DIR").unwrap_or_else(|| {
            panic!(
                "AWS_JIT_BIN_DIR is not set: run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)"
            )
        }));
        for bin in ["etcd", "kube-apiserver", "kubectl"] {
            assert!(
                bin_dir.join(bin).is_file(),
                "AWS_JIT_BIN_DIR={} has no {bin}: run `eval \"$(hack/ensure-tools.sh)\"` first (make test does)",
                bin_dir.display()
            );
        }

        let dir = tempfile::Builder::new()
            .prefix("aws-jit-kube-")
            .tempdir()
            .expect("create a temp dir for the kube stack")
            .keep();
        if std::env::var_os("AWS_JIT_KEEP_STACK").is_some() {
            eprintln!("kube stack: keeping {}", dir.display());
        } else {
            procs::remove_at_exit(dir.clone());
        }

        make_pki(&dir, options);
        let tokens: Vec<String> = User::ALL.iter().map(|_| random_token()).collect();
        let components: Vec<(String, &str, String)> = options
            .node
            .map(component_users)
            .unwrap_or_default()
            .into_iter()
            .map(|(user, group)| (user, group, random_token()))
            .collect();
        write_token_file(&dir.join("tokens.csv"), &tokens, &components);

        let etcd_url = start_etcd(&bin_dir, &dir, deadline);
        let probe = ApiserverProbe::new(&dir.join("ca.crt"));
        let server = start_service(
            "kube-apiserver",
            &dir,
            deadline,
            || {
                let port = options.port.unwrap_or_else(free_port);
                let server = format!("https://{}:{port}", options.address);
                (
                    apiserver_command(&bin_dir, &dir, &etcd_url, port, options),
                    server,
                    port,
                )
            },
            // User::ALL[0] is the admin.
            |server| probe.ready(server, &tokens[0]),
        );

        let stack = KubeStack {
            dir,
            bin_dir,
            server,
            tokens,
            components: components
                .into_iter()
                .map(|(user, _, token)| (user, token))
                .collect(),
        };
        for user in User::ALL {
            stack.write_kubeconfig(user);
        }
        for (user, token) in &stack.components {
            let path = stack
                .dir
                .join(format!("kubeconfig-{}.yaml", user.replace(':', "-")));
            let config = stack.kubeconfig_with_token(user, token);
            std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        eprintln!(
            "kube stack: ready at {} in {:.1?} ({})",
            stack.server,
            started.elapsed(),
            stack.dir.display()
        );
        stack
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The stack's directory (certificates, logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for one of the node's components, by username (see
    /// [`Options::node`]).
    pub fn component_kubeconfig(&self, user: &str) -> PathBuf {
        assert!(
            self.components.iter().any(|(u, _)| u == user),
            "no component user {user} (the stack was started without Options::node?)"
        );
        self.dir
            .join(format!("kubeconfig-{}.yaml", user.replace(':', "-")))
    }

    fn kubeconfig_with_token(&self, user: &str, token: &str) -> serde_json::Value {
        let ca = std::fs::read(self.ca_file()).expect("read ca.crt");
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "aws-jit-test", "cluster": {
                "server": self.server,
                "certificate-authority-data": k8s_openapi::ByteString(ca),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "aws-jit-test", "user": user}}],
            "current-context": user,
        })
    }

    /// The PEM file of the CA that signed the apiserver's serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The bearer token of `user`.
    pub fn token(&self, user: User) -> &str {
        let i = User::ALL
            .iter()
            .position(|u| *u == user)
            .expect("every user is in User::ALL");
        &self.tokens[i]
    }

    /// The directory holding etcd, kube-apiserver, kubectl (and helm when built).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The apiserver's log, for a test that wants to show it on failure.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.join("kube-apiserver.log")
    }

    /// A kubeconfig for `user`: token auth, the CA embedded, one context (current).
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir.join(format!("kubeconfig-{}.yaml", user.key()))
    }

    /// A client acting as `user`. Build one per test (a client belongs to its runtime).
    pub async fn client(&self, user: User) -> ::kube::Client {
        let path = self.kubeconfig(user);
        let kubeconfig = ::kube::config::Kubeconfig::read_from(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let config = ::kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &::kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("kube config from {}: {e}", path.display()));
        ::kube::Client::try_from(config).expect("build a kube client")
    }

    /// Runs the Go-built kubectl as `user` and returns its output (whatever its status).
    pub fn kubectl(&self, user: User, args: &[&str]) -> Output {
        self.kubectl_command(user, args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// Like [`KubeStack::kubectl`], with `stdin` on kubectl's standard input (`-f -`).
    pub fn kubectl_stdin(&self, user: User, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_command(user, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut pipe = child.stdin.take().expect("kubectl stdin is piped");
        let input = stdin.to_owned();
        // Written from another thread, so a kubectl that talks before it has read all
        // of its input cannot deadlock with us.
        let writer = std::thread::spawn(move || {
            // kubectl may exit without reading (a usage error); its output says why.
            let _ = pipe.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for kubectl");
        writer.join().expect("kubectl stdin writer panicked");
        out
    }

    /// `kubectl patch accessrequest NAME -n NS --subresource=status --type=TYPE -p PATCH`
    /// as `user`: how approvers vote and requesters revoke (TYPE `json` or `merge`).
    pub fn patch_status(
        &self,
        user: User,
        ns: &str,
        name: &str,
        patch_type: &str,
        patch: &str,
    ) -> Output {
        let patch_type = format!("--type={patch_type}");
        self.kubectl(
            user,
            &[
                "patch",
                "accessrequest",
                name,
                "-n",
                ns,
                "--subresource=status",
                &patch_type,
                "-p",
                patch,
            ],
        )
    }

    /// Appends one entry (`approval`, its JSON) to `status.approvals`: the documented
    /// vote command.
    pub fn append_approval(&self, user: User, ns: &str, name: &str, approval: &str) -> Output {
        let patch = format!(r#"[{{"op":"add","path":"/status/approvals/-","value":{approval}}}]"#);
        self.patch_status(user, ns, name, "json", &patch)
    }

    /// Creates a namespace with a unique name starting with `prefix`, as admin.
    pub async fn create_namespace(&self, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{Api, ObjectMeta, PostParams};
        let name = super::unique(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("aws-jit.dev/e2e".to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client(User::Admin).await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        name
    }

    fn kubectl_command(&self, user: User, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig(user))
            .args(args);
        cmd
    }

    fn write_kubeconfig(&self, user: User) {
        let path = self.kubeconfig(user);
        let config = self.kubeconfig_for(&[user], None);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&config).expect("serialise kubeconfig"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A kubeconfig (as JSON, which is YAML) with one context per user, named by
    /// [`User::key`], each with `namespace` when given; the first user's current.
    pub fn kubeconfig_for(&self, users: &[User], namespace: Option<&str>) -> serde_json::Value {
        let ca = std::fs::read(self.ca_file()).expect("read ca.crt");
        let cluster = "aws-jit-test";
        // serde does the quoting. ByteString serialises as base64.
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": cluster,
                "cluster": {
                    "server": self.server,
                    "certificate-authority-data": k8s_openapi::ByteString(ca),
                },
            }],
            "users": users.iter().map(|u| serde_json::json!({
                "name": u.key(),
                "user": { "token": self.token(*u) },
            })).collect::<Vec<_>>(),
            "contexts": users.iter().map(|u| {
                let mut context = serde_json::json!({ "cluster": cluster, "user": u.key() });
                if let Some(ns) = namespace {
                    context["namespace"] = serde_json::json!(ns);
                }
                serde_json::json!({ "name": u.key(), "context": context })
            }).collect::<Vec<_>>(),
            "current-context": users.first().map(|u| u.key()).unwrap_or_default(),
        })
    }
}

/// A CA, the apiserver's serving certificate (its address, and for a node the names
/// pods use for the `kubernetes` Service) and the service-account signing key, made with
/// the openssl CLI; for a node, also the client certificate it shows the kubelet.
fn make_pki(dir: &Path, options: &Options) {
    let mut sans = format!("IP:{},DNS:localhost", options.address);
    if options.address != Ipv4Addr::LOCALHOST {
        sans.push_str(",IP:127.0.0.1");
    }
    if options.node.is_some() {
        sans.push_str(
            ",DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local",
        );
    }
    // Our own config, so the system's openssl.cnf (e.g. a default CA:TRUE on every
    // certificate, which rustls refuses on a server certificate) plays no part.
    std::fs::write(
        dir.join("openssl.cnf"),
        format!(
            "[req]\n\
         distinguished_name = dn\n\
         [dn]\n\
         [ca]\n\
         basicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = {sans}\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n\
         [client]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
        ),
    )
    .expect("write openssl.cnf");
    // Paths are relative to `dir`; no argument has a space.
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!(
            "req -x509 -config openssl.cnf -extensions ca {ec} -days 3650 \
             -keyout ca.key -out ca.crt -subj /CN=aws-jit-test-ca"
        ),
    );
    openssl(
        dir,
        &format!(
            "req -new -config openssl.cnf {ec} \
             -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver"
        ),
    );
    openssl(
        dir,
        "x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
         -extfile openssl.cnf -extensions server -out apiserver.crt",
    );
    openssl(
        dir,
        "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key",
    );
    // The apiserver reads verification keys only from public-key (or certificate) PEM.
    openssl(dir, "pkey -in sa.key -pubout -out sa.pub");
    if options.node.is_some() {
        openssl(
            dir,
            &format!(
                "req -new -config openssl.cnf {ec} -keyout kubelet-client.key \
                 -out kubelet-client.csr -subj /O=system:masters/CN=kube-apiserver-kubelet-client"
            ),
        );
        openssl(
            dir,
            "x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
             -extfile openssl.cnf -extensions client -out kubelet-client.crt",
        );
    }
}

fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("run openssl (the kube stack makes its certificates with the openssl CLI): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The apiserver's static token file: `token,user,uid,"group,group"`.
fn write_token_file(path: &Path, tokens: &[String], components: &[(String, &str, String)]) {
    let mut csv = String::new();
    for (user, token) in User::ALL.iter().zip(tokens) {
        let name = user.name();
        let groups = user.groups().join(",");
        csv.push_str(&format!("{token},{name},{name},\"{groups}\"\n"));
    }
    for (name, groups, token) in components {
        csv.push_str(&format!("{token},{name},{name},\"{groups}\"\n"));
    }
    std::fs::write(path, csv).expect("write the token file");
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback port nobody listens on right now. Another process may take it before
/// ours binds it: `start_service` retries on "address already in use".
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

fn start_etcd(bin_dir: &Path, dir: &Path, deadline: Instant) -> String {
    start_service(
        "etcd",
        dir,
        deadline,
        || {
            let port = free_port();
            let client = format!("http://127.0.0.1:{port}");
            let peer = format!("http://127.0.0.1:{}", free_port());
            let mut cmd = Command::new(bin_dir.join("etcd"));
            cmd.arg("--name=aws-jit-test")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=aws-jit-test={peer}"))
                // Throwaway data: speed over durability.
                .arg("--unsafe-no-fsync")
                .arg("--log-level=warn");
            (cmd, client, port)
        },
        |client| etcd_ready(client),
    )
}

fn apiserver_command(
    bin_dir: &Path,
    dir: &Path,
    etcd_url: &str,
    port: u16,
    options: &Options,
) -> Command {
    let file = |name: &str| dir.join(name).display().to_string();
    let mut cmd = Command::new(bin_dir.join("kube-apiserver"));
    cmd.arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--bind-address={}", options.address))
        .arg(format!("--advertise-address={}", options.address))
        .arg(format!("--secure-port={port}"))
        .arg(format!("--tls-cert-file={}", file("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", file("apiserver.key")))
        // Unused with the files above, but keeps anything it writes inside our dir.
        .arg(format!("--cert-dir={}", file("certs")))
        // Static bearer tokens are the only authentication (plus anonymous for /readyz).
        .arg(format!("--token-auth-file={}", file("tokens.csv")))
        .arg(match options.node {
            Some(_) => "--authorization-mode=Node,RBAC",
            None => "--authorization-mode=RBAC",
        })
        // Admission: the defaults, ValidatingAdmissionPolicy among them; nothing disabled.
        // Service-account tokens (`kubectl create token`) signed with our key.
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", file("sa.pub")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            file("sa.key")
        ))
        .arg(format!(
            "--service-cluster-ip-range={}",
            options.service_cidr
        ))
        .arg("--profiling=false");
    if options.node.is_some() {
        cmd.arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!(
                "--kubelet-client-certificate={}",
                file("kubelet-client.crt")
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                file("kubelet-client.key")
            ))
            // No DNS for the node's name: the apiserver reaches the kubelet at its IP.
            .arg("--kubelet-preferred-address-types=InternalIP");
    } else {
        // The `kubernetes` Service's endpoints would be 127.0.0.1, which endpoint
        // validation refuses (a retry loop in the log); nothing here needs them.
        cmd.arg("--endpoint-reconciler-type=none");
    }
    cmd
}

/// Starts a service on fresh ports (via `make`, which also says the port it serves on)
/// until it listens there and `ready` accepts it, retrying when it died because a port
/// picked as free was taken in the meantime. Panics with the tail of its log when it
/// dies or is not ready by `deadline`.
fn start_service<T>(
    name: &str,
    dir: &Path,
    deadline: Instant,
    mut make: impl FnMut() -> (Command, T, u16),
    mut ready: impl FnMut(&T) -> Result<(), String>,
) -> T {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let log = match attempt {
            1 => dir.join(format!("{name}.log")),
            n => dir.join(format!("{name}.{n}.log")),
        };
        let (cmd, info, port) = make();
        let pid =
            procs::spawn_service(cmd, log.clone()).unwrap_or_else(|e| panic!("start {name}: {e}"));
        loop {
            // Whoever answers on the port must be our process, not another test run's
            // service that took the port first.
            let check = match listens(pid, port) {
                true => ready(&info),
                false => Err(format!("pid {pid} not listening on port {port} yet")),
            };
            let last = match check {
                Ok(()) => return info,
                Err(observed) => observed,
            };
            if exited(pid) {
                let tail = log_tail(&log);
                if attempt < ATTEMPTS && tail.contains("address already in use") {
                    break;
                }
                panic!(
                    "{name} exited during startup (last observed: {last}); tail of {}:\n{tail}",
                    log.display()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{name} not ready after {START_TIMEOUT:?} (last observed: {last}); tail of {}:\n{}",
                    log.display(),
                    log_tail(&log)
                );
            }
            // Paces the polling; readiness is the condition above.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Whether `pid` (our child, never reaped before exit) has exited.
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: Z for a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Whether process `pid` holds a socket listening on TCP `port`: the socket's inode,
/// from /proc/net/tcp{,6}, among the process's file descriptors.
fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st ... inode; st 0A is LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// etcd's `/health` over plain HTTP.
fn etcd_ready(client_url: &str) -> Result<(), String> {
    let addr = client_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("GET /health: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET /health: {e}"))?;
    let ok = response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200");
    if ok && response.contains(r#""health":"true""#) {
        return Ok(());
    }
    Err(format!(
        "GET /health: {}",
        response.lines().last().unwrap_or("")
    ))
}

/// Polls the apiserver over HTTPS: one runtime and connection pool for all the polls.
struct ApiserverProbe {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl ApiserverProbe {
    fn new(ca_file: &Path) -> ApiserverProbe {
        let ca = std::fs::read(ca_file).expect("read ca.crt");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime for the readiness probe");
        // A reqwest client binds to the runtime it first runs on: build it inside.
        let http = runtime.block_on(async {
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("parse ca.crt"))
                .timeout(Duration::from_secs(5))
                .build()
                .expect("build the readiness probe's http client")
        });
        ApiserverProbe { runtime, http }
    }

    /// `/readyz` answers ok, and the `default` namespace (made by a bootstrap
    /// controller after start, which /readyz does not cover) exists.
    fn ready(&self, server: &str, admin_token: &str) -> Result<(), String> {
        self.runtime.block_on(async {
            for path in ["/readyz?verbose", "/api/v1/namespaces/default"] {
                let response = self
                    .http
                    .get(format!("{server}{path}"))
                    .bearer_auth(admin_token)
                    .send()
                    .await
                    .map_err(|e| format!("GET {path}: {e}"))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    // /readyz lists its checks; keep the failing ones.
                    let failing: Vec<&str> =
                        body.lines().filter(|l| l.starts_with("[-]")).collect();
                    return Err(format!("GET {path}: {status} {}", failing.join("; ")));
                }
            }
            Ok(())
        })
    }
}
