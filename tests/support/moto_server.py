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
"""

import sys

import botocore.session
from moto.server import main
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
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

if __name__ == "__main__":
    sys.exit(main())
