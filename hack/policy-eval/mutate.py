#!/usr/bin/env python3
"""Tests the tests: a stand-in for the policy evaluator that breaks one thing, named by
MUTATION, in aws-jit's documents (or in the request context, or in the evaluator itself)
and passes the rest to the real evaluator (REAL_EVAL). Every mutation must make some
policy_eval test fail; hack/policy-eval/mutants.sh runs them all.

    mutate.py --list     the mutations, one a line
"""
import json
import os
import subprocess
import sys


def ours_trust(st):
    # A grant statement of the contract's shape (AwsJit<uid>, two actions).
    return (
        st.get("Sid", "").startswith("AwsJit")
        and not st.get("Sid", "").startswith("AwsJitSessions")
        and isinstance(st.get("Action"), list)
    )


def ours_deny(st):
    return st.get("Sid", "").startswith("AwsJitSessions")


def is_expire(st):
    return st.get("Sid") == "AwsJitSessionsExpire"


def is_revoked(st):
    return st.get("Sid") == "AwsJitSessionsRevoked"


def _move(cond, src, dst):
    cond[dst] = cond.pop(src)


def _like_all(st):
    st["Condition"]["StringLike"]["aws:userid"] = "*:ar-*"


# name -> (which statements, what to do to one)
STATEMENT_MUTATIONS = {
    "trust_date_flip": (ours_trust, lambda st: _move(st["Condition"], "DateLessThan", "DateGreaterThan")),
    "trust_no_session_name": (ours_trust, lambda st: st["Condition"]["StringEquals"].pop("sts:RoleSessionName")),
    "trust_no_source_identity": (ours_trust, lambda st: st["Condition"]["StringEquals"].pop("sts:SourceIdentity")),
    "trust_session_name_like": (
        ours_trust,
        lambda st: (
            st["Condition"]["StringEquals"].pop("sts:RoleSessionName"),
            st["Condition"].update({"StringLike": {"sts:RoleSessionName": "ar-*"}}),
        ),
    ),
    "trust_principal_account": (ours_trust, lambda st: st.update({"Principal": {"AWS": "arn:aws:iam::123456789012:root"}})),
    "trust_only_assume_role": (ours_trust, lambda st: st.update({"Action": "sts:AssumeRole"})),
    "expire_userid_without_role_id": (
        is_expire,
        lambda st: st["Condition"]["StringLike"].update(
            {"aws:userid": st["Condition"]["StringLike"]["aws:userid"].removeprefix("*:")}
        ),
    ),
    "expire_date_flip": (is_expire, lambda st: _move(st["Condition"], "DateGreaterThan", "DateLessThan")),
    "expire_on_token_issue_time": (
        is_expire,
        lambda st: st["Condition"].update(
            {"DateGreaterThan": {"aws:TokenIssueTime": st["Condition"]["DateGreaterThan"]["aws:CurrentTime"]}}
        ),
    ),
    "expire_every_grant": (is_expire, _like_all),
    "revoked_every_grant": (is_revoked, _like_all),
    "revoked_by_person": (is_revoked, lambda st: st.update({"Condition": {"StringEquals": {"aws:SourceIdentity": "alice"}}})),
    "deny_s3_only": (ours_deny, lambda st: st.update({"Action": "s3:*"})),
    "deny_becomes_allow": (ours_deny, lambda st: st.update({"Effect": "Allow"})),
    "no_conditions": (lambda st: True, lambda st: st.pop("Condition", None)),
}
OTHER_MUTATIONS = [
    "revoked_dropped",  # the tightened policy without S_revoked
    "context_userid_without_role_id",  # aws:userid = the session name alone
    "rubber_stamp",  # an evaluator that allows everything
    "refuses_everything",  # ... that implicitly denies everything
    "denies_everything",  # ... that explicitly denies everything
]
CANNED = {"rubber_stamp": "Allowed", "refuses_everything": "ImplicitlyDenied", "denies_everything": "ExplicitlyDenied"}


def mutate_doc(doc, m):
    if isinstance(doc, str):
        doc = json.loads(doc)
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    if m == "revoked_dropped":
        statements = [st for st in statements if not is_revoked(st)]
    if m in STATEMENT_MUTATIONS:
        which, change = STATEMENT_MUTATIONS[m]
        for st in statements:
            if which(st):
                change(st)
    doc["Statement"] = statements
    return doc


def main():
    if sys.argv[1:] == ["--list"]:
        print("\n".join([*STATEMENT_MUTATIONS, *OTHER_MUTATIONS]))
        return 0
    m = os.environ["MUTATION"]
    if m not in STATEMENT_MUTATIONS and m not in OTHER_MUTATIONS and m != "none":
        sys.exit(f"mutate.py: unknown MUTATION {m}")
    cases = json.load(sys.stdin)
    if m in CANNED:
        for c in cases:
            print(json.dumps({"name": c.get("name", ""), "decision": CANNED[m]}))
        return 0
    for c in cases:
        c["policies"] = [mutate_doc(p, m) for p in c.get("policies", [])]
        if c.get("resource_policy") is not None:
            c["resource_policy"] = mutate_doc(c["resource_policy"], m)
        ctx = c.get("context", {})
        if m == "context_userid_without_role_id" and ":" in ctx.get("aws:userid", ""):
            ctx["aws:userid"] = ctx["aws:userid"].split(":", 1)[1]
    real = subprocess.run([os.environ["REAL_EVAL"]], input=json.dumps(cases).encode(), capture_output=True)
    sys.stdout.buffer.write(real.stdout)
    sys.stderr.buffer.write(real.stderr)
    return real.returncode


if __name__ == "__main__":
    sys.exit(main())
