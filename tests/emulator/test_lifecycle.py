"""LocalAws starts fast, stops cleanly, and evaluates alarms in the background."""

from __future__ import annotations

import os
import time

import pytest

from layershift.local.server import LocalAws

from .support import TRUST_POLICY, handler_zip, wait_for


def test_start_stop_repeatedly_and_undo_patches(tmp_path):
    from moto.awslambda.models import LambdaBackend

    original_invoke = LambdaBackend.invoke
    previous = os.environ.get("MOTO_PORT")
    for _ in range(2):
        started = time.monotonic()
        with LocalAws(state_dir=tmp_path) as aws:
            assert time.monotonic() - started < 30  # starts, rather than hangs, even on a loaded machine
            assert aws.endpoint_url.startswith("http://127.0.0.1:")
            assert os.environ["MOTO_PORT"] == str(aws.port)
            assert LambdaBackend.invoke is not original_invoke
            assert aws.client("s3").list_buckets()["Buckets"] == []  # fresh state each start
            aws.client("s3").create_bucket(Bucket="left-behind")
            with pytest.raises(RuntimeError):
                LocalAws(state_dir=tmp_path).start()
        assert LambdaBackend.invoke is original_invoke
        assert os.environ.get("MOTO_PORT") == previous


def test_background_evaluator_sets_alarm_state(tmp_path):
    with LocalAws(state_dir=tmp_path, alarm_interval=0.2) as aws:
        role = aws.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument=TRUST_POLICY)["Role"]["Arn"]
        lam = aws.client("lambda")
        lam.create_function(
            FunctionName="flaky",
            Runtime="python3.13",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": handler_zip("def handler(e, c):\n    raise KeyError('x')\n")},
        )
        aws.client("cloudwatch").put_metric_alarm(
            AlarmName="flaky-errors",
            Namespace="AWS/Lambda",
            MetricName="Errors",
            Statistic="Sum",
            Dimensions=[{"Name": "FunctionName", "Value": "flaky"}],
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
        lam.invoke(FunctionName="flaky", Payload=b"{}")

        def state() -> str:
            alarms = aws.client("cloudwatch").describe_alarms(AlarmNames=["flaky-errors"])["MetricAlarms"]
            return alarms[0]["StateValue"] == "ALARM"

        wait_for(state, timeout=5)
