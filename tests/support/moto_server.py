"""moto's server (`moto_server`), with one gap of moto 5.2.5 closed so it runs the
shipped state machine as AWS does. Started by tests/support/aws.rs with the moto
virtualenv's python; every argument goes to moto's own `main`.

The gap: a Task `arn:aws:states:::states:startExecution` (the flow starting its session
cleanup) takes its parameters in PascalCase on AWS (`StateMachineArn`, `Name`, `Input`),
as every Step Functions service integration does. moto hands them unchanged to a boto3
Step Functions client, whose model names them in camelCase (`stateMachineArn`, `name`,
`input`), and botocore's serializer fails with `KeyError('StateMachineArn')`: the Task
ends in `States.Runtime`. moto adds an `Input` key itself, so no spelling works unpatched.
The fix maps each parameter to the model's member of the same name, ignoring case, which
is what AWS does; nothing else changes (see deploy/aws/README.md, "Testing on moto").

Issue 12 closes three more, for the IdentityCenter grant method:
- The service name. AWS's resource ARN for IAM Identity Center is
  `arn:aws:states:::aws-sdk:ssoadmin:<action>`; moto hands `ssoadmin` to boto3, which
  knows the service as `sso-admin` (`Unknown service: 'ssoadmin'`): the Task ends in
  `States.Runtime`. The fix adds `ssoadmin -> sso-admin` to moto's own table of Step
  Functions names that differ from boto3's (it already maps `sfn` and `states`), so
  the shipped template keeps AWS's spelling and moto runs it.
- The error names. AWS names an aws-sdk Task's errors `<Service>.<Exception>` in
  PascalCase (`SsoAdmin.ConflictException`); moto spells the service as written in the
  ARN unless its table of error names has it (it has `dynamodb -> DynamoDb`), so it
  would say `ssoadmin.ConflictException`, a name AWS never uses. The fix adds
  `ssoadmin -> SsoAdmin` to that table. (IAM and Identity Store are left as moto spells
  them, `iam.X` and `identitystore.X`: the template matches both spellings there.)
- Duplicate assignments. On AWS an account assignment is one (principal, permission
  set, account): creating it again changes nothing. moto appends a second identical row
  per create, and its delete removes one row, so an assignment created by two
  overlapping grants would survive the last revoke in moto only. The fix makes a
  create of an existing assignment return that assignment, as AWS keeps one.
- Permission set ARNs. AWS names a permission set
  `arn:aws:sso:::permissionSet/ssoins-<id>/ps-<id>`; moto names it
  `arn:aws:sso:::instance/ssoins-<id>/ps-<id>` (the instance's ARN + `/ps-<id>`), which
  the template's ManagedPermissionSetArns pattern and the IAM resources it grants on
  rightly refuse. The fix makes moto name them as AWS does (moto reads only the last
  `/` part of the ARN elsewhere).
- Session durations. AWS answers a permission set's `SessionDuration` as an ISO 8601
  duration (`PT1H`); moto answers its default as the number 3600, which the AWS SDK
  for Rust refuses to read (`expected ValueString`), so no SDK client could create or
  describe a permission set. The fix answers numbers as AWS's ISO form.
And one of its Step Functions that more concurrent executions made show: answering a
task token (`SendTaskSuccess`, `SendTaskFailure`, `SendTaskHeartbeat`) walks every
running execution and asks its worker's environment about the token; an execution with
no environment (one being started, or one stopped while it waited for a token, which
moto keeps RUNNING) raises `AttributeError`, and the answer fails with HTTP 500 for
every token while it exists. AWS answers the token's own task whatever other executions
do. The fix skips executions without an environment. And a task is answered once: moto
keeps an answered token's endpoint and takes a second answer while the execution runs
(a Deny sent after the approval had been answered "succeeded", though the execution had
already gone on to the grant); AWS refuses any answer to a closed task with
`TaskTimedOut` ("the task associated with the token has already been closed"). The fix
refuses it so.
And one of moto's CloudFormation: an `!If` that yields `AWS::NoValue` inside a list
(a policy statement granted only when a grant method is installed) is dropped from the
list by CloudFormation; moto leaves a null there, and IAM refuses the policy
(`MalformedPolicyDocument`). The fix drops it, as CloudFormation does.
"""

import sys

import botocore.session
from moto.cloudformation import parsing as cfn_parsing
from moto.core.exceptions import AWSError
from moto.server import main
from moto.ssoadmin import models as ssoadmin_models
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service,
    state_task_service_aws_sdk,
    state_task_service_sfn,
)

_Sfn = state_task_service_sfn.StateTaskServiceSfn
_moto_normalise = _Sfn._normalise_parameters
_model = botocore.session.get_session().get_service_model("stepfunctions")
_operations = {
    botocore.xform_name(name): name for name in _model.operation_names
}


def _normalise_parameters(
    self, parameters, boto_service_name=None, service_action_name=None
):
    _moto_normalise(self, parameters, boto_service_name, service_action_name)
    if service_action_name is not None:
        return
    operation = _operations.get(self._get_boto_service_action())
    if operation is None:
        return
    members = {
        m.lower(): m for m in _model.operation_model(operation).input_shape.members
    }
    for key in list(parameters):
        member = members.get(key.lower())
        if member is not None and member != key:
            parameters[member] = parameters.pop(key)


_Sfn._normalise_parameters = _normalise_parameters

# Identity Center: AWS's service name in the resource ARN, and AWS's error prefix.
state_task_service.StateTaskService._SERVICE_NAME_SFN_TO_BOTO_OVERRIDES["ssoadmin"] = (
    "sso-admin"
)
state_task_service_aws_sdk._SERVICE_ERROR_NAMES["ssoadmin"] = "SsoAdmin"

# One assignment per (principal, permission set, account), as on AWS.
_Backend = ssoadmin_models.SSOAdminBackend
_moto_create_assignment = _Backend.create_account_assignment


def _create_account_assignment(self, instance_arn, target_id, target_type,
                               permission_set_arn, principal_type, principal_id):
    try:
        existing = self._find_account(instance_arn, target_id, target_type,
                                      permission_set_arn, principal_type, principal_id)
    except ssoadmin_models.ResourceNotFoundException:
        return _moto_create_assignment(self, instance_arn, target_id, target_type,
                                       permission_set_arn, principal_type, principal_id)
    return existing.to_json(include_creation_date=True, include_request_id=True)


_Backend.create_account_assignment = _create_account_assignment


def _permission_set_id(instance_arn):
    arn = _moto_permission_set_id(instance_arn)
    return arn.replace(":sso:::instance/", ":sso:::permissionSet/", 1)


_moto_permission_set_id = ssoadmin_models.PermissionSet.generate_id
ssoadmin_models.PermissionSet.generate_id = staticmethod(_permission_set_id)

def _iso_duration(value):
    if not isinstance(value, int):
        return value
    hours, rest = divmod(value, 3600)
    minutes, seconds = divmod(rest, 60)
    return "PT" + "".join(
        f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n
    ) if value else "PT0S"


_moto_permission_set_to_json = ssoadmin_models.PermissionSet.to_json


def _permission_set_to_json(self, include_creation_date=False):
    summary = _moto_permission_set_to_json(self, include_creation_date)
    summary["SessionDuration"] = _iso_duration(summary.get("SessionDuration"))
    return summary


ssoadmin_models.PermissionSet.to_json = _permission_set_to_json

# A task token is answered whatever other executions are doing.
from moto.stepfunctions.parser import models as sfn_parser_models

_SfnBackend = sfn_parser_models.StepFunctionsParserBackend


def _callback_pools(backend, status):
    for execution in backend._get_executions(status):
        worker = getattr(execution, "exec_worker", None)
        env = getattr(worker, "env", None)
        if env is not None:
            yield env.callback_pool_manager


class _TaskClosed(AWSError):
    # moto's own TaskTimedOut (its parser's) carries no error type on the wire: the SDK
    # reads it as an unknown error.
    TYPE = "TaskTimedOut"
    STATUS = 400

    def __init__(self):
        super().__init__("Task Timed Out: the task associated with the token has already been closed")


def _answer(backend, status, notify, task_token):
    m = sfn_parser_models
    for pool in _callback_pools(backend, status):
        endpoint = pool.get(task_token)
        if endpoint is not None and endpoint.get_outcome() is not None:
            raise _TaskClosed()
        try:
            if notify(pool):
                return True
        except m.CallbackNotifyConsumerError as consumer_error:
            if isinstance(consumer_error, m.CallbackConsumerTimeout):
                raise _TaskClosed()
            raise m.TaskDoesNotExist()
    raise m.InvalidToken()


def _send_task_heartbeat(self, task_token):
    _answer(
        self,
        sfn_parser_models.ExecutionStatus.RUNNING,
        lambda pool: pool.heartbeat(callback_id=task_token),
        task_token,
    )


def _send_task_success(self, task_token, outcome):
    result = sfn_parser_models.CallbackOutcomeSuccess(callback_id=task_token, output=outcome)
    _answer(
        self,
        sfn_parser_models.ExecutionStatus.RUNNING,
        lambda pool: pool.notify(callback_id=task_token, outcome=result),
        task_token,
    )


def _send_task_failure(self, task_token, error=None, cause=None):
    result = sfn_parser_models.CallbackOutcomeFailure(
        callback_id=task_token, error=error, cause=cause
    )
    _answer(
        self,
        None,
        lambda pool: pool.notify(callback_id=task_token, outcome=result),
        task_token,
    )
    return sfn_parser_models.SendTaskFailureOutput()


_SfnBackend.send_task_heartbeat = _send_task_heartbeat
_SfnBackend.send_task_success = _send_task_success
_SfnBackend.send_task_failure = _send_task_failure

# CloudFormation drops AWS::NoValue from a list.
_moto_clean_json = cfn_parsing.clean_json


def _clean_json(resource_json, resources_map):
    cleaned = _moto_clean_json(resource_json, resources_map)
    if isinstance(resource_json, list):
        return [
            value
            for item, value in zip(resource_json, cleaned)
            if not (value is None and isinstance(item, dict))
        ]
    return cleaned


cfn_parsing.clean_json = _clean_json

if __name__ == "__main__":
    sys.exit(main())
