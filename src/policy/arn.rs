//! IAM ARNs, parsed once for everyone: the worker (which role's trust policy), the
//! controller (the FIFO group of a role, the requester's principal) and the trust-policy
//! editor (which principals a statement may name).

/// Characters IAM allows in a role or user name.
const NAME_CHARS: &str = "+=,.@_-";

/// An `arn:<partition>:<iam|sts>::<account>:<resource>` ARN, checked for shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IamArn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

/// Parses an IAM or STS ARN: partition `aws` or `aws-…`, no region, a 12-digit account,
/// and a non-empty resource of the characters IAM allows in names and paths (no
/// wildcards: an ARN here always names one identity).
pub fn parse(arn: &str) -> Option<IamArn<'_>> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let partition_ok = partition
        .strip_prefix("aws")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
    let service_ok = service == "iam" || service == "sts";
    let account_ok = account.len() == 12 && account.chars().all(|c| c.is_ascii_digit());
    let resource_ok = !resource.is_empty()
        && resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || NAME_CHARS.contains(c) || c == '/');
    (partition_ok && service_ok && account_ok && resource_ok).then_some(IamArn {
        partition,
        service,
        account,
        resource,
    })
}

/// An IAM role ARN's account and role name (`arn:aws:iam::123456789012:role/jit/admin`
/// → (`123456789012`, `admin`)); None for anything else.
pub fn role(arn: &str) -> Option<(&str, &str)> {
    named(arn, "role/", 64)
}

/// An IAM user ARN's account and user name (`arn:aws:iam::123456789012:user/people/alice`
/// → (`123456789012`, `alice`)); None for anything else.
pub fn user(arn: &str) -> Option<(&str, &str)> {
    named(arn, "user/", 64)
}

/// An IAM group ARN's account and group name (`arn:aws:iam::123456789012:group/admins`
/// → (`123456789012`, `admins`)); None for anything else.
pub fn group(arn: &str) -> Option<(&str, &str)> {
    named(arn, "group/", 128)
}

/// The account and name of an IAM ARN of `kind` (`role/`, `user/`, `group/`), with an
/// optional path and a name of at most `max` characters IAM allows.
fn named<'a>(arn: &'a str, kind: &str, max: usize) -> Option<(&'a str, &'a str)> {
    let parsed = parse(arn).filter(|a| a.service == "iam")?;
    let path_and_name = parsed.resource.strip_prefix(kind)?;
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || NAME_CHARS.contains(c));
    (name_ok && !path_and_name.contains("//")).then_some((parsed.account, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_give_account_and_name() {
        assert_eq!(
            role("arn:aws:iam::123456789012:role/admin"),
            Some(("123456789012", "admin"))
        );
        assert_eq!(
            role("arn:aws-cn:iam::123456789012:role/a/b/admin"),
            Some(("123456789012", "admin"))
        );
        for bad in [
            "arn:aws:iam::123456789012:user/admin",
            "arn:aws:iam::12345:role/admin",
            "arn:aws:iam:us-east-1:123456789012:role/admin",
            "arn:aws:sts::123456789012:role/admin",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a//b",
            "arn:aws:iam::123456789012:role/*",
            "arn:azure:iam::123456789012:role/admin",
            "nonsense",
        ] {
            assert_eq!(role(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_and_group_arns_give_account_and_name() {
        assert_eq!(
            user("arn:aws:iam::123456789012:user/people/alice"),
            Some(("123456789012", "alice"))
        );
        assert_eq!(user("arn:aws:iam::123456789012:role/alice"), None);
        assert_eq!(user("arn:aws:iam::123456789012:user/*"), None);
        assert_eq!(
            group("arn:aws:iam::123456789012:group/admins"),
            Some(("123456789012", "admins"))
        );
        assert_eq!(group("arn:aws:iam::123456789012:user/admins"), None);
        assert_eq!(group("arn:aws:iam::123456789012:group/"), None);
    }

    #[test]
    fn principals_are_iam_or_sts_without_wildcards() {
        assert!(parse("arn:aws:iam::123456789012:user/alice").is_some());
        assert!(parse("arn:aws:sts::123456789012:assumed-role/r/alice").is_some());
        assert!(parse("arn:aws:iam::123456789012:root").is_some());
        assert!(parse("arn:aws:iam::123456789012:user/*").is_none());
        assert!(parse("arn:aws:s3:::bucket").is_none());
        assert!(parse("arn:aws:iam::123456789012:user/al ice").is_none());
    }
}
