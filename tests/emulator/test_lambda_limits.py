"""Lambda's control-plane limits on the local AWS (--aws-limits): the shared rate, GetFunction's own
bucket, and the settle time of an update, each answered as Lambda answers it."""

from __future__ import annotations

import time

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from layershift.local import lambda_limits
from layershift.local.lambda_limits import AwsLimits

from .support import handler_zip

NO_RETRIES = Config(retries={"total_max_attempts": 1})


@pytest.fixture
def limited(aws):
    def apply(**limits: float) -> None:
        aws.set_aws_limits(AwsLimits(**limits))

    yield apply
    aws.set_aws_limits(None)


def _code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def test_the_shared_rate_refuses_what_exceeds_it_and_getfunction_has_its_own_bucket(aws, make_function, limited):
    name = make_function(handler_zip("def handler(e, c):\n    return 1\n"))
    lam = aws.client("lambda", config=NO_RETRIES)
    limited(control_rate=5, get_function_rate=50, settle_seconds=0)

    started = time.monotonic()
    admitted, refused = 0, []
    while time.monotonic() - started < 2.0:
        try:
            lam.get_function_configuration(FunctionName=name)
            admitted += 1
        except ClientError as error:
            refused.append(error)
    elapsed = time.monotonic() - started
    # a full bucket (one second's worth), then the rate: never more than that
    assert 5 <= admitted <= 5 + 5 * elapsed + 1
    assert refused, "the rate was never exceeded"
    assert {_code(e) for e in refused} == {"TooManyRequestsException"}
    assert refused[0].response["Error"]["Message"] == "Rate exceeded"
    assert refused[0].response["ResponseMetadata"]["HTTPStatusCode"] == 429

    # GetFunction draws from its own bucket: the control plane's being empty does not refuse it
    for _ in range(10):
        lam.get_function(FunctionName=name)
    # invokes are not control-plane requests
    lam.invoke(FunctionName=name, Payload=b"{}")
    stats = lambda_limits.stats()
    assert stats["admitted"]["GetFunction"] == 10
    assert stats["refused"]["GetFunctionConfiguration"] == len(refused)
    assert "Invoke" not in stats["admitted"]


def test_an_update_settles_before_a_version_can_be_published(aws, make_function, limited):
    name = make_function(handler_zip("def handler(e, c):\n    return 1\n"))
    lam = aws.client("lambda", config=NO_RETRIES)
    limited(settle_seconds=1.5)

    updated = lam.update_function_configuration(FunctionName=name, Description="changed")
    assert updated["LastUpdateStatus"] == "InProgress"
    assert lam.get_function(FunctionName=name)["Configuration"]["LastUpdateStatus"] == "InProgress"
    with pytest.raises(ClientError) as publish:
        lam.publish_version(FunctionName=name)
    assert _code(publish.value) == "ResourceConflictException"
    assert "An update is in progress" in publish.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as again:
        lam.update_function_configuration(FunctionName=name, Description="changed twice")
    assert _code(again.value) == "ResourceConflictException"

    started = time.monotonic()
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    assert 0.5 < time.monotonic() - started < 3
    assert lam.get_function_configuration(FunctionName=name)["LastUpdateStatus"] == "Successful"
    assert lam.publish_version(FunctionName=name)["Version"] == "1"
    assert lambda_limits.stats()["conflicts"] == {"PublishVersion": 1, "UpdateFunctionConfiguration": 1}


def test_without_limits_nothing_is_refused(aws, make_function):
    name = make_function(handler_zip("def handler(e, c):\n    return 1\n"))
    lam = aws.client("lambda", config=NO_RETRIES)
    for _ in range(40):
        lam.get_function_configuration(FunctionName=name)
    lam.update_function_configuration(FunctionName=name, Description="changed")
    assert lam.get_function_configuration(FunctionName=name)["LastUpdateStatus"] == "Successful"
    lam.publish_version(FunctionName=name)
