//! The sandbox behind `make sandbox` (examples/sandbox.rs), and the test that runs the
//! README's tour in it (tests/e2e/sandbox.rs): on a running [`Stack`], the AWS side
//! deployed into moto, the sample AccessRole `prod-admin` with its IAM role, AWS keys of
//! their own for the sample requesters, the operator running, and a directory of files
//! a person sources to become one of the sample users:
//!
//! ```text
//! <dir>/kubeconfig          every user as a context (kubectl --context carol …)
//! <dir>/<user>.kubeconfig   one user, the sandbox namespace as the context's
//! <dir>/<user>.env          KUBECONFIG, PATH (kubectl, kubectl-jit, aws), moto as AWS
//!                           with the user's own keys, AWS_CONFIG_FILE, a prompt
//! ```
use std::path::{Path, PathBuf};

use super::kube::User;
use super::{Stack, aws, succeeded};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The people of the sandbox, in the order the instructions list them.
pub const PEOPLE: [(User, &str); 5] = [
    (User::Alice, "requester (group developers)"),
    (User::Bob, "requester (group developers)"),
    (User::Carol, "approver (named in prod-admin, group sre)"),
    (User::Dave, "approver (named in prod-admin, group sre)"),
    (
        User::Admin,
        "cluster admin (system:masters), moto's root AWS keys",
    ),
];

/// The IAM role `deploy/samples/accessrole.yaml` grants (in moto's account).
pub const ROLE_NAME: &str = "prod-admin";

pub struct Options {
    /// The namespace people work in (created if missing).
    pub namespace: String,
    /// Where the users' files go (created; emptied first).
    pub dir: PathBuf,
    /// The operator watches only `namespace` (tests share the stack with other
    /// operators), or every namespace (the sandbox has it to itself).
    pub watch_only_namespace: bool,
    /// Where `kubectl-jit` is (put on the users' PATH).
    pub plugin_dir: PathBuf,
    /// Also the other two samples (`prod-admin-sso`, `prod-admins-group`), with moto's
    /// Identity Center instance, a permission set `AdminAccess`, Identity Center users
    /// for the requesters and the IAM group `/jit/admins`. Not in tests: the samples'
    /// names are cluster-wide, and another test applies them as shipped.
    pub other_methods: bool,
}

/// A running sandbox. [`Sandbox::stop`] stops its operator; the stack's processes stop
/// with the process that started them (tests/support/procs.rs).
pub struct Sandbox {
    pub namespace: String,
    pub dir: PathBuf,
    pub aws: aws::AwsOutputs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    pub async fn start(stack: &Stack, options: Options) -> Sandbox {
        let Options {
            namespace,
            dir,
            watch_only_namespace,
            plugin_dir,
            other_methods,
        } = options;
        let kube = &stack.kube;
        succeeded(&kube.kubectl_stdin(
            User::Admin,
            &["apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
        ));
        let sdk = stack.aws.sdk_config().await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let others = if other_methods {
            Some(OtherMethods::set_up(&sdk).await)
        } else {
            None
        };
        // The execution role may act on the samples' targets alone.
        let role_arn = format!("arn:aws:iam::{}:role/{ROLE_NAME}", aws::ACCOUNT_ID);
        let params = others
            .as_ref()
            .map(OtherMethods::params)
            .unwrap_or_default();
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let outputs = stack
            .aws
            .deploy_with_params("sandbox", &[role_arn], &params)
            .await;
        ensure_role(&iam).await;
        if let Some(others) = &others {
            others.apply_samples(kube);
        }
        succeeded(&kube.kubectl(
            User::Admin,
            &[
                "apply",
                "-f",
                &format!("{ROOT}/deploy/samples/accessrole.yaml"),
            ],
        ));

        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir);
        let aws_cli = std::env::var_os("AWS_JIT_AWS_CLI").map(PathBuf::from);
        let mut path_dirs = vec![kube.bin_dir().to_path_buf(), plugin_dir];
        if let Some(cli) = aws_cli.as_deref().and_then(Path::parent) {
            path_dirs.push(cli.to_path_buf());
        }
        write_kubeconfig(
            stack,
            &dir.join("kubeconfig"),
            &PEOPLE.map(|p| p.0),
            &namespace,
        );
        for (user, _) in PEOPLE {
            let key = user.key();
            let kubeconfig = dir.join(format!("{key}.kubeconfig"));
            write_kubeconfig(stack, &kubeconfig, &[user], &namespace);
            let (access_key, secret) = match user {
                User::Alice | User::Bob => access_keys(&iam, user.name()).await,
                _ => ("testing".to_owned(), "testing".to_owned()),
            };
            let config_file = dir.join(format!("{key}.aws-config"));
            private_write(&config_file, b"");
            let path: Vec<String> = path_dirs.iter().map(|d| d.display().to_string()).collect();
            let env = format!(
                "# source me to act as {name} in the aws-jit sandbox\n\
                 export KUBECONFIG={kubeconfig}\n\
                 export PATH={path}:\"$PATH\"\n\
                 export AWS_ENDPOINT_URL={endpoint}\n\
                 export AWS_REGION={region}\n\
                 export AWS_DEFAULT_REGION={region}\n\
                 export AWS_ACCESS_KEY_ID={access_key}\n\
                 export AWS_SECRET_ACCESS_KEY={secret}\n\
                 unset AWS_SESSION_TOKEN AWS_PROFILE\n\
                 export AWS_CONFIG_FILE={config_file}\n\
                 export AWS_SHARED_CREDENTIALS_FILE=/dev/null\n\
                 export AWS_EC2_METADATA_DISABLED=true\n\
                 export AWS_JIT_SANDBOX_USER={name}\n\
                 aws_jit_ps1=${{PS1-}}\n\
                 PS1=\"(jit:{name}) ${{aws_jit_ps1#\\(jit:*\\) }}\"\n\
                 unset aws_jit_ps1\n",
                name = user.name(),
                kubeconfig = shell_quote(&kubeconfig.display().to_string()),
                path = shell_quote(&path.join(":")),
                endpoint = shell_quote(&stack.aws.endpoint),
                region = aws::REGION,
                config_file = shell_quote(&config_file.display().to_string()),
            );
            let file = dir.join(format!("{key}.env"));
            private_write(&file, env.as_bytes());
        }

        let config = outputs.operator_config(watch_only_namespace.then(|| namespace.clone()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator_kube = kube.client(User::Operator).await;
        let operator = tokio::spawn(async move {
            aws_jit::run::operator::run(operator_kube, &sdk, config, async move {
                let _ = stopped.await;
            })
            .await
        });
        Sandbox {
            namespace,
            dir,
            aws: outputs,
            stop: Some(stop),
            operator: Some(operator),
        }
    }

    /// The file to source to act as `user`.
    pub fn env_file(&self, user: User) -> PathBuf {
        self.dir.join(format!("{}.env", user.key()))
    }

    /// Stops the operator (and waits for it) and removes the users' files.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(operator) = self.operator.take() {
            let _ = operator.await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.abort();
        }
    }
}

/// `'…'` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What the IdentityCenter and IamGroup samples grant, made in moto.
struct OtherMethods {
    instance_arn: String,
    store_id: String,
    permission_set_arn: String,
}

/// The accounts the IdentityCenter sample names.
const SAMPLE_ACCOUNTS: &str = "111111111111,222222222222";
const SAMPLE_GROUP: &str = "admins";

impl OtherMethods {
    async fn set_up(sdk: &aws_config::SdkConfig) -> OtherMethods {
        let sso = aws_sdk_ssoadmin::Client::new(sdk);
        let instances = sso.list_instances().send().await.expect("list instances");
        let instance = instances
            .instances()
            .first()
            .cloned()
            .expect("moto has an Identity Center instance");
        let instance_arn = instance.instance_arn().expect("instance arn").to_owned();
        let store_id = instance.identity_store_id().expect("store id").to_owned();
        let permission_set_arn = sso
            .create_permission_set()
            .instance_arn(&instance_arn)
            .name("AdminAccess")
            .send()
            .await
            .expect("create permission set AdminAccess")
            .permission_set
            .and_then(|p| p.permission_set_arn)
            .expect("permission set arn");
        let store = aws_sdk_identitystore::Client::new(sdk);
        for who in [User::Alice, User::Bob] {
            let name = who.name();
            store
                .create_user()
                .identity_store_id(&store_id)
                .user_name(name)
                .display_name(name)
                .name(
                    aws_sdk_identitystore::types::Name::builder()
                        .given_name(name)
                        .family_name("Example")
                        .build(),
                )
                .emails(
                    aws_sdk_identitystore::types::Email::builder()
                        .value(format!("{name}@example.com"))
                        .primary(true)
                        .build(),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("create Identity Center user {name}: {e:?}"));
        }
        aws_sdk_iam::Client::new(sdk)
            .create_group()
            .group_name(SAMPLE_GROUP)
            .path("/jit/")
            .send()
            .await
            .expect("create IAM group /jit/admins");
        OtherMethods {
            instance_arn,
            store_id,
            permission_set_arn,
        }
    }

    fn group_arn() -> String {
        format!("arn:aws:iam::{}:group/jit/{SAMPLE_GROUP}", aws::ACCOUNT_ID)
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IdentityCenterInstanceArn", self.instance_arn.clone()),
            ("IdentityStoreId", self.store_id.clone()),
            ("ManagedPermissionSetArns", self.permission_set_arn.clone()),
            ("ManagedAccountIds", SAMPLE_ACCOUNTS.into()),
            ("ManagedGroupArns", OtherMethods::group_arn()),
        ]
    }

    /// The two samples as shipped but for what only moto knows: the instance, the
    /// identity store, and the requesters' IAM users (at `/`, where the TrustPolicy
    /// sample's template finds them, rather than `/people/`).
    fn apply_samples(&self, kube: &super::kube::KubeStack) {
        let read = |file: &str| {
            let path = format!("{ROOT}/deploy/samples/{file}");
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        };
        let sso = read("accessrole-identity-center.yaml")
            .replace(
                "arn:aws:sso:::instance/ssoins-1234567890abcdef",
                &self.instance_arn,
            )
            .replace("d-1234567890", &self.store_id);
        let group = read("accessrole-iam-group.yaml")
            .replace("user/people/{username}", "user/{username}")
            .replace(
                "arn:aws:iam::123456789012:group/jit/admins",
                &OtherMethods::group_arn(),
            );
        for yaml in [sso, group] {
            succeeded(&kube.kubectl_stdin(User::Admin, &["apply", "-f", "-"], &yaml));
        }
    }
}

/// The sample role's IAM role in moto, with a trust policy that trusts nobody yet.
async fn ensure_role(iam: &aws_sdk_iam::Client) {
    let base = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Ec2","Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    if iam.get_role().role_name(ROLE_NAME).send().await.is_ok() {
        return;
    }
    iam.create_role()
        .role_name(ROLE_NAME)
        .assume_role_policy_document(base)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create IAM role {ROLE_NAME}: {e:?}"));
}

/// A fresh access key of IAM user `name` (created if missing): the person's own AWS
/// credentials, from which `kubectl jit credentials` assumes the granted role.
async fn access_keys(iam: &aws_sdk_iam::Client, name: &str) -> (String, String) {
    if iam.get_user().user_name(name).send().await.is_err() {
        iam.create_user()
            .user_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create IAM user {name}: {e:?}"));
    }
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create an access key of {name}: {e:?}"))
        .access_key
        .unwrap_or_else(|| panic!("no access key for {name}"));
    (key.access_key_id, key.secret_access_key)
}

/// A kubeconfig with one context per user (named as the user), `namespace` as each
/// context's namespace, the first user's context current.
fn write_kubeconfig(stack: &Stack, path: &Path, users: &[User], namespace: &str) {
    let config = stack.kube.kubeconfig_for(users, Some(namespace));
    // Tokens inside (the admin's is system:masters): the person's only, from the start.
    private_write(
        path,
        &serde_json::to_vec_pretty(&config).expect("serialise a kubeconfig"),
    );
}

/// The users' directory, the person's only (`/tmp/aws-jit-sandbox` is a well-known path
/// in a shared `/tmp`): created 0700, and made so if it was there already.
fn private_dir(dir: &Path) {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod 0700 {}: {e}", dir.display()));
}

/// Writes a file that holds tokens or keys: created 0600, never readable by others even
/// for a moment (a write then a chmod leaves a window).
fn private_write(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    // A file that was there already keeps its mode through open: make it private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(bytes))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
