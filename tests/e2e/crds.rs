//! The CRDs on a real apiserver: they install, and every CEL rule refuses a malformed
//! object with a message a person understands.
use crate::support::kube::User;
use crate::support::{refused, stack, succeeded, unique};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/samples");

fn role_yaml(name: &str, spec_overrides: &str) -> String {
    let base = format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRole\nmetadata:\n  name: {name}\nspec:\n"
    );
    let defaults = [
        ("roleArn", "arn:aws:iam::123456789012:role/admin"),
        ("approvers", "[{user: carol}]"),
        ("requesters", "[{group: developers}]"),
        (
            "principal",
            "{template: 'arn:aws:iam::123456789012:user/{username}'}",
        ),
    ];
    // A role of another method names no roleArn unless the case says so.
    let other_method = spec_overrides.contains("method: IdentityCenter")
        || spec_overrides.contains("method: IamGroup");
    let mut spec = String::new();
    for (k, v) in defaults {
        if k == "roleArn" && other_method {
            continue;
        }
        if !spec_overrides.contains(&format!("{k}:")) {
            spec.push_str(&format!("  {k}: {v}\n"));
        }
    }
    for line in spec_overrides.lines() {
        spec.push_str(&format!("  {line}\n"));
    }
    base + &spec
}

/// A valid identityCenter block.
const IC: &str = "identityCenter:\n  instanceArn: arn:aws:sso:::instance/ssoins-1234567890abcdef\n  identityStoreId: d-1234567890\n  permissionSet: arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-0123456789abcdef\n  accountIds: ['111111111111']";
/// A valid iamGroup block.
const GROUP: &str = "iamGroup: {groupArn: 'arn:aws:iam::123456789012:group/admins'}";

/// An IdentityCenter role whose identityCenter block has `field: value` instead.
fn ic_with(field: &str) -> String {
    let key = field.split(':').next().unwrap_or_default();
    let mut lines: Vec<String> = IC
        .lines()
        .filter(|l| !l.trim_start().starts_with(&format!("{key}:")))
        .map(str::to_owned)
        .collect();
    lines.push(format!("  {field}"));
    let block = lines.join("\n");
    format!("method: IdentityCenter\nprincipal: {{template: '{{username}}'}}\n{block}")
}

fn request_yaml(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: aws-jit.io/v1alpha1\nkind: AccessRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

#[tokio::test]
async fn crds_are_established_with_printer_columns() {
    let kube = &stack().kube;
    for crd in ["accessrequests.aws-jit.io", "accessroles.aws-jit.io"] {
        let established = succeeded(&kube.kubectl(
            User::Admin,
            &[
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Established')].status}",
            ],
        ));
        assert_eq!(established, "True", "{crd} is not Established");
    }
    // Short names and printer columns are served.
    let ns = kube.create_namespace("crd-columns").await;
    succeeded(&kube.kubectl_stdin(
        User::Alice,
        &["apply", "-f", "-"],
        &request_yaml(
            &ns,
            "cols",
            "role: prod-admin\nrequester: alice\nreason: columns",
        ),
    ));
    let table = succeeded(&kube.kubectl(User::Alice, &["get", "ar", "-n", &ns]));
    for column in ["ROLE", "REQUESTER", "PHASE", "EXPIRES", "AGE"] {
        assert!(
            table.contains(column),
            "column {column} missing from:\n{table}"
        );
    }
    assert!(
        table.contains("prod-admin") && table.contains("alice"),
        "{table}"
    );
}

#[tokio::test]
async fn samples_are_accepted() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("crd-samples").await;
    // The sample role is cluster-scoped and shared: a role admin (admin) applies it.
    succeeded(&kube.kubectl(
        User::Admin,
        &["apply", "-f", &format!("{SAMPLES}/accessrole.yaml")],
    ));
    succeeded(&kube.kubectl(
        User::Alice,
        &[
            "apply",
            "-n",
            &ns,
            "-f",
            &format!("{SAMPLES}/accessrequest.yaml"),
        ],
    ));
    let role = succeeded(&kube.kubectl(
        User::Alice,
        &[
            "get",
            "accessrole",
            "prod-admin",
            "-o",
            "jsonpath={.spec.method} {.spec.approvalsRequired}",
        ],
    ));
    assert_eq!(role, "TrustPolicy 1");
    // The other methods' samples, as the README shows them.
    for (file, name, method) in [
        (
            "accessrole-identity-center.yaml",
            "prod-admin-sso",
            "IdentityCenter",
        ),
        ("accessrole-iam-group.yaml", "prod-admins-group", "IamGroup"),
        // Extensions, scheduled starts and break glass.
        ("accessrole-policy.yaml", "prod-admin-oncall", "TrustPolicy"),
    ] {
        succeeded(&kube.kubectl(User::Admin, &["apply", "-f", &format!("{SAMPLES}/{file}")]));
        let got = succeeded(&kube.kubectl(
            User::Alice,
            &["get", "accessrole", name, "-o", "jsonpath={.spec.method}"],
        ));
        assert_eq!(got, method);
    }
    succeeded(&kube.kubectl(
        User::Admin,
        &["apply", "-f", &format!("{SAMPLES}/slackidentity.yaml")],
    ));
    let who = succeeded(&kube.kubectl(
        User::Admin,
        &[
            "get",
            "slackidentity",
            "u0carol01",
            "-o",
            "jsonpath={.spec.username}",
        ],
    ));
    assert_eq!(who, "carol");
}

#[tokio::test]
async fn malformed_access_requests_are_refused_with_their_message() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("crd-bad-request").await;
    let cases = [
        (
            "duration: forever",
            "duration must be a positive Go duration",
        ),
        ("duration: 1h30", "duration must be a positive Go duration"),
        (
            "duration: \"-5m\"",
            "duration must be a positive Go duration",
        ),
        ("duration: 0s", "duration must be a positive Go duration"),
        ("duration: 1d", "duration must be a positive Go duration"),
    ];
    for (i, (line, message)) in cases.iter().enumerate() {
        let yaml = request_yaml(
            &ns,
            &format!("bad-{i}"),
            &format!("role: prod-admin\nrequester: alice\nreason: r\n{line}"),
        );
        refused(
            &kube.kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
            message,
        );
    }
    let yaml = request_yaml(&ns, "bad-role", "role: Prod_Admin\nrequester: alice");
    refused(
        &kube.kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        "role must be the name of an AccessRole",
    );
    let yaml = request_yaml(&ns, "no-requester", "role: prod-admin");
    refused(
        &kube.kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        "spec.requester: Required value",
    );
    // Good durations pass: Go syntax, including compound and fractional forms.
    for (i, d) in ["30m", "1h30m", "1.5h", "90s"].iter().enumerate() {
        let yaml = request_yaml(
            &ns,
            &format!("good-{i}"),
            &format!("role: prod-admin\nrequester: alice\nduration: {d}"),
        );
        succeeded(&kube.kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml));
    }
}

#[tokio::test]
async fn spec_is_immutable_even_for_an_admin() {
    let kube = &stack().kube;
    let ns = kube.create_namespace("crd-immutable").await;
    succeeded(&kube.kubectl_stdin(
        User::Alice,
        &["create", "-f", "-"],
        &request_yaml(
            &ns,
            "fixed",
            "role: prod-admin\nrequester: alice\nduration: 30m",
        ),
    ));
    refused(
        &kube.kubectl(
            User::Admin,
            &[
                "patch",
                "ar",
                "fixed",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"duration":"4h"}}"#,
            ],
        ),
        "spec is immutable",
    );
    // The requester has no update right at all.
    refused(
        &kube.kubectl(
            User::Alice,
            &[
                "patch",
                "ar",
                "fixed",
                "-n",
                &ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"duration":"4h"}}"#,
            ],
        ),
        "Forbidden",
    );
    let duration = succeeded(&kube.kubectl(
        User::Alice,
        &[
            "get",
            "ar",
            "fixed",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.duration}",
        ],
    ));
    assert_eq!(duration, "30m");
}

#[tokio::test]
async fn malformed_access_roles_are_refused_with_their_message() {
    let kube = &stack().kube;
    let cases = [
        (
            "roleArn: arn:aws:iam::123:role/admin".to_owned(),
            "roleArn must be an IAM role ARN",
        ),
        (
            "roleArn: arn:aws:iam::123456789012:user/admin".to_owned(),
            "roleArn must be an IAM role ARN",
        ),
        ("roleArn: not-an-arn".to_owned(), "roleArn must be an IAM role ARN"),
        (
            "approvalsRequired: 0".to_owned(),
            "approvalsRequired must be at least 1",
        ),
        // The apiserver compiles the pattern (RE2) and refuses one that does not.
        (
            "reasonPattern: 'INC-('".to_owned(),
            "spec.reasonPattern: Invalid value: \"string\": error parsing regexp: missing closing ): `INC-(`",
        ),
        (
            "ticketPattern: '[a-'".to_owned(),
            "ticketPattern must be a regular expression (RE2 syntax)",
        ),
        // Perl classes mean ASCII to the apiserver and Unicode to the controller.
        (
            r"ticketPattern: '^INC-\d+$'".to_owned(),
            r"ticketPattern must not use \d, \w, \s or \b",
        ),
        (
            r"reasonPattern: '[\w ]+'".to_owned(),
            r"reasonPattern must not use \d, \w, \s or \b",
        ),
        (
            "maxDuration: forever".to_owned(),
            "maxDuration must be a positive Go duration",
        ),
        (
            "defaultDuration: 0s".to_owned(),
            "defaultDuration must be a positive Go duration",
        ),
        (
            "approvalTimeout: soon".to_owned(),
            "approvalTimeout must be a positive Go duration",
        ),
        (
            "defaultDuration: 8h\nmaxDuration: 4h".to_owned(),
            "defaultDuration must not exceed maxDuration",
        ),
        (
            "approvers: [{user: carol, group: sre}]".to_owned(),
            "set exactly one of user or group",
        ),
        ("approvers: [{}]".to_owned(), "set exactly one of user or group"),
        (
            "approvers: [{user: carol, slackUserId: carol}]".to_owned(),
            "slackUserId must be a Slack user ID",
        ),
        ("approvers: []".to_owned(), "spec.approvers"),
        (
            "principal: {}".to_owned(),
            "set principal.template or at least one principal.users entry",
        ),
        (
            "principal: {template: 'arn:aws:iam::123456789012:user/admin'}".to_owned(),
            "principal.template must contain {username}",
        ),
        (
            "principal: {template: '{username}@example.com'}".to_owned(),
            "with method TrustPolicy, principal.template and every principal.users value must be an IAM principal ARN",
        ),
        (
            "principal: {users: {alice: 'alice@example.com'}}".to_owned(),
            "with method TrustPolicy, principal.template and every principal.users value must be an IAM principal ARN",
        ),
        ("method: Magic".to_owned(), "spec.method"),
        // Each method names its own target, and only that.
        (
            "method: IdentityCenter".to_owned(),
            "method IdentityCenter grants a permission set: set identityCenter",
        ),
        (
            "method: IdentityCenter\nroleArn: arn:aws:iam::123456789012:role/admin\nprincipal: {template: '{username}'}\n".to_owned()
                + IC,
            "set identityCenter (instanceArn, identityStoreId, permissionSet, accountIds), and neither roleArn nor iamGroup",
        ),
        (
            "method: IamGroup\nprincipal: {template: 'arn:aws:iam::123456789012:user/{username}'}".to_owned(),
            "method IamGroup grants membership of the IAM group in iamGroup.groupArn",
        ),
        (
            format!("{IC}\n{GROUP}"),
            "method TrustPolicy grants the IAM role in roleArn: set roleArn, and neither identityCenter nor iamGroup",
        ),
        // Identity Center fields.
        (
            ic_with("instanceArn: arn:aws:sso:::instance/nope"),
            "identityCenter.instanceArn must be an Identity Center instance ARN",
        ),
        (
            ic_with("identityStoreId: store"),
            "identityCenter.identityStoreId must be an identity store ID",
        ),
        (
            ic_with("permissionSet: 'Admin Access'"),
            "identityCenter.permissionSet must be a permission set ARN",
        ),
        (
            ic_with("accountIds: ['12345']"),
            "identityCenter.accountIds must be 12-digit AWS account IDs",
        ),
        (ic_with("accountIds: []"), "spec.identityCenter.accountIds"),
        (ic_with("userAttribute: Phone"), "spec.identityCenter.userAttribute"),
        (
            "method: IdentityCenter\nprincipal: {template: 'arn:aws:iam::123456789012:user/{username}'}\n".to_owned() + IC,
            "with method IdentityCenter, principal.template and every principal.users value must be an Identity Center user name or email",
        ),
        // IAM group fields.
        (
            "method: IamGroup\nprincipal: {template: 'arn:aws:iam::123456789012:user/{username}'}\niamGroup: {groupArn: 'arn:aws:iam::123456789012:role/admins'}".to_owned(),
            "iamGroup.groupArn must be an IAM group ARN",
        ),
        (
            "method: IamGroup\nprincipal: {template: 'arn:aws:iam::123456789012:role/{username}'}\n".to_owned() + GROUP,
            "with method IamGroup, principal.template and every principal.users value must be an IAM user ARN",
        ),
        (
            "method: IamGroup\nprincipal: {users: {alice: 'arn:aws:iam::210987654321:user/alice'}}\n".to_owned() + GROUP,
            "the IAM users of principal must be in the account of iamGroup.groupArn",
        ),
        // Extensions: only where the expiry can be moved, and bounded.
        (
            "method: IdentityCenter\nprincipal: {template: '{username}'}\nextension: {}\n".to_owned() + IC,
            "extension is supported with method TrustPolicy only",
        ),
        (
            "extension: {maxExtensions: 0}".to_owned(),
            "extension.maxExtensions must be between 1 and 16",
        ),
        (
            "extension: {approvalsRequired: -1}".to_owned(),
            "extension.approvalsRequired must be between 0 and 64",
        ),
        // Scheduling and break glass are bounded by the role's own limits.
        (
            "maxStartDelay: 2000h".to_owned(),
            "maxStartDelay must be a positive Go duration of at most 720h",
        ),
        (
            "maxDuration: 1h\nrequesters: [{group: developers}]\nbreakGlass: {requesters: [{user: alice}], maxDuration: 2h}".to_owned(),
            "breakGlass.maxDuration must not exceed maxDuration",
        ),
        (
            "requesters: [{group: developers}]\nbreakGlass: {requesters: []}".to_owned(),
            "spec.breakGlass.requesters",
        ),
    ];
    for (line, message) in cases {
        let yaml = role_yaml(&unique("bad-role"), &line);
        refused(
            &kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &yaml),
            message,
        );
    }
    // Defaults: method, durations and approvalsRequired are filled by the apiserver.
    let name = unique("defaults");
    succeeded(&kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &role_yaml(&name, "")));
    let got = succeeded(&kube.kubectl(
        User::Admin,
        &[
            "get", "accessrole", &name, "-o",
            "jsonpath={.spec.method} {.spec.defaultDuration} {.spec.maxDuration} {.spec.approvalTimeout} {.spec.approvalsRequired}",
        ],
    ));
    assert_eq!(got, "TrustPolicy 1h 4h 1h 1");
    // One role of each other method, as the README shows them.
    for spec in [
        "method: IdentityCenter\nprincipal: {template: '{username}@example.com'}\n".to_owned() + IC,
        ic_with("permissionSet: AdminAccess\n  userAttribute: Email")
            .replace("{template: '{username}'}", "{users: {alice: alice@example.com}}"),
        "method: IamGroup\nprincipal: {template: 'arn:aws:iam::123456789012:user/people/{username}'}\n".to_owned() + GROUP,
    ] {
        succeeded(&kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &role_yaml(&unique("other-method"), &spec)));
    }
    // A role with a path and a non-default partition is a role ARN too.
    let yaml = role_yaml(
        &unique("path-role"),
        "roleArn: arn:aws-us-gov:iam::123456789012:role/platform/break-glass",
    );
    succeeded(&kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &yaml));
}

#[tokio::test]
async fn requesters_cannot_define_roles() {
    let kube = &stack().kube;
    let yaml = role_yaml(&unique("sneaky"), "");
    refused(
        &kube.kubectl_stdin(User::Alice, &["create", "-f", "-"], &yaml),
        "Forbidden",
    );
    refused(
        &kube.kubectl_stdin(User::Carol, &["create", "-f", "-"], &yaml),
        "Forbidden",
    );
}

/// A Slack user ID no other test uses.
fn fresh_slack_id() -> String {
    let tail: String = unique("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("UCRD{}", tail.to_ascii_uppercase())
}

#[tokio::test]
async fn slack_identity_rules_keep_one_person_per_slack_user() {
    use crate::support::slack_interactions::slack_identity_yaml;
    let kube = &stack().kube;
    let id = fresh_slack_id();
    let name = id.to_ascii_lowercase();
    let other = fresh_slack_id();
    let cases = [
        // The name is the Slack ID in lower case: anything else is refused...
        (
            slack_identity_yaml("carol", &id, "carol", &[]),
            "metadata.name must be spec.slackUserId in lower case",
        ),
        (
            slack_identity_yaml(&other.to_ascii_lowercase(), &id, "carol", &[]),
            "metadata.name must be spec.slackUserId in lower case",
        ),
        (
            slack_identity_yaml("ucarol", "carol", "carol", &[]),
            "slackUserId must be a Slack user ID",
        ),
        (
            slack_identity_yaml(&name, &id, "slack:UCAROL01", &[]),
            "username must be a person's Kubernetes username",
        ),
        (
            slack_identity_yaml(
                &name,
                &id,
                "system:serviceaccount:aws-jit-system:aws-jit",
                &[],
            ),
            "username must be a person's Kubernetes username",
        ),
        (slack_identity_yaml(&name, &id, "", &[]), "spec.username"),
        (
            slack_identity_yaml(&name, &id, "carol", &[""]),
            "spec.groups",
        ),
    ];
    for (yaml, message) in cases {
        refused(
            &kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &yaml),
            message,
        );
    }
    let good = slack_identity_yaml(&name, &id, "carol", &["sre", "sre-leads"]);
    succeeded(&kube.kubectl_stdin(User::Admin, &["create", "-f", "-"], &good));
    // ... so a second mapping of the same Slack user cannot exist.
    refused(
        &kube.kubectl_stdin(
            User::Admin,
            &["create", "-f", "-"],
            &slack_identity_yaml(&name, &id, "dave", &[]),
        ),
        "AlreadyExists",
    );
    let table = succeeded(&kube.kubectl(User::Admin, &["get", "slackidentity", &name]));
    for needle in ["SLACK USER", "USERNAME", &id, "carol"] {
        assert!(table.contains(needle), "{needle} in:\n{table}");
    }
}
