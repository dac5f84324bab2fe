"""AWS/Lambda metrics and alarm evaluation on the local emulated AWS."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from layershift.local.alarms import evaluate_all_alarms_once


def _sum(aws, name: str, dimensions: dict[str, str], metric: str = "Invocations") -> float:
    now = datetime.now(UTC)
    points = aws.client("cloudwatch").get_metric_statistics(
        Namespace="AWS/Lambda",
        MetricName=metric,
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
        Period=3600,
        Statistics=["Sum"],
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
    )["Datapoints"]
    return sum(p["Sum"] for p in points)


def test_metrics_per_resource_and_executed_version(aws, two_versions):
    lam = aws.client("lambda")
    lam.update_alias(
        FunctionName=two_versions,
        Name="live",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}},
    )
    for i in range(8):
        payload = {"raise": "ValueError"} if i % 4 == 3 else {}
        lam.invoke(FunctionName=two_versions, Qualifier="live", Payload=json.dumps(payload).encode())
    lam.invoke(FunctionName=two_versions, Qualifier="2", Payload=b"{}")

    resource = f"{two_versions}:live"
    # every fourth invoke runs version 2, and each of those raised
    assert _sum(aws, two_versions, {"FunctionName": two_versions, "Resource": resource, "ExecutedVersion": "2"}) == 2
    assert _sum(aws, two_versions, {"FunctionName": two_versions, "Resource": resource, "ExecutedVersion": "1"}) == 6
    assert (
        _sum(
            aws,
            two_versions,
            {"FunctionName": two_versions, "Resource": resource, "ExecutedVersion": "2"},
            "Errors",
        )
        == 2
    )
    assert (
        _sum(
            aws,
            two_versions,
            {"FunctionName": two_versions, "Resource": resource, "ExecutedVersion": "1"},
            "Errors",
        )
        == 0
    )
    # dimension sets match exactly, as in CloudWatch
    assert _sum(aws, two_versions, {"FunctionName": two_versions, "Resource": resource}) == 8
    assert _sum(aws, two_versions, {"FunctionName": two_versions, "Resource": f"{two_versions}:2"}) == 1
    assert _sum(aws, two_versions, {"FunctionName": two_versions}) == 9
    durations = aws.client("cloudwatch").get_metric_statistics(
        Namespace="AWS/Lambda",
        MetricName="Duration",
        StartTime=datetime.now(UTC) - timedelta(minutes=5),
        EndTime=datetime.now(UTC) + timedelta(minutes=1),
        Period=3600,
        Statistics=["Maximum", "SampleCount"],
        Dimensions=[{"Name": "FunctionName", "Value": two_versions}],
    )["Datapoints"]
    assert durations[0]["SampleCount"] == 9 and durations[0]["Maximum"] > 0
    assert durations[0]["Unit"] == "Milliseconds"


def test_get_metric_data_by_executed_version(aws, two_versions):
    lam = aws.client("lambda")
    lam.invoke(FunctionName=two_versions, Qualifier="live", Payload=b"{}")
    now = datetime.now(UTC)
    result = aws.client("cloudwatch").get_metric_data(
        MetricDataQueries=[
            {
                "Id": "inv",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/Lambda",
                        "MetricName": "Invocations",
                        "Dimensions": [
                            {"Name": "ExecutedVersion", "Value": "1"},
                            {"Name": "Resource", "Value": f"{two_versions}:live"},
                            {"Name": "FunctionName", "Value": two_versions},
                        ],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
            }
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=1),
    )["MetricDataResults"][0]
    assert sum(result["Values"]) == 1


def _alarm(aws, name: str, function: str, **overrides) -> None:
    definition = {
        "AlarmName": name,
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Statistic": "Sum",
        "Dimensions": [
            {"Name": "FunctionName", "Value": function},
            {"Name": "Resource", "Value": f"{function}:live"},
        ],
        "Period": 60,
        "EvaluationPeriods": 1,
        "Threshold": 1,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }
    definition.update(overrides)
    aws.client("cloudwatch").put_metric_alarm(**definition)


def _state(aws, name: str) -> dict:
    return aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"][0]


def test_alarm_on_alias_errors_goes_to_alarm_and_back(aws, two_versions):
    _alarm(aws, "live-errors", two_versions)
    evaluate_all_alarms_once()
    assert _state(aws, "live-errors")["StateValue"] == "OK"

    lam = aws.client("lambda")
    lam.invoke(FunctionName=two_versions, Qualifier="2", Payload=b'{"raise": "ValueError"}')
    evaluate_all_alarms_once()
    assert _state(aws, "live-errors")["StateValue"] == "OK"  # errors of another resource

    invoked_at = int(datetime.now(UTC).timestamp())
    lam.invoke(FunctionName=two_versions, Qualifier="live", Payload=b'{"raise": "ValueError"}')
    assert ("live-errors", "ALARM") in evaluate_all_alarms_once()
    alarm = _state(aws, "live-errors")
    assert alarm["StateValue"] == "ALARM"
    assert "1.0" in alarm["StateReason"] and "greater than or equal to the threshold" in alarm["StateReason"]
    assert json.loads(alarm["StateReasonData"])["recentDatapoints"] == [1.0]

    # Early in the next period, before any datapoint of it, the last complete period still counts.
    next_period = datetime.fromtimestamp(invoked_at - invoked_at % 60 + 60, UTC).replace(tzinfo=None)
    assert evaluate_all_alarms_once(now=next_period + timedelta(seconds=1)) == []
    assert _state(aws, "live-errors")["StateValue"] == "ALARM"

    # Two periods later the error is out of the window; missing data is not breaching.
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=120)
    assert ("live-errors", "OK") in evaluate_all_alarms_once(now=later)


def _early_in_a_period(seconds_left: float = 5.0) -> None:
    """Sleep until at least ``seconds_left`` remain in the current 10- and 60-second periods, so
    the steps that follow land in the periods the test reasons about."""
    while True:
        now = time.time()
        if 10 - now % 10 >= seconds_left and 60 - now % 60 >= seconds_left:
            return
        time.sleep(10 - now % 10 + 0.05)


def test_missing_data_treatment_and_m_of_n(aws, two_versions):
    lam = aws.client("lambda")
    _alarm(
        aws,
        "missing-is-missing",
        two_versions,
        TreatMissingData="missing",
        MetricName="Invocations",
        Threshold=1000,
    )
    _alarm(
        aws,
        "missing-breaches",
        two_versions,
        TreatMissingData="breaching",
        Dimensions=[{"Name": "FunctionName", "Value": "no-such-function"}],
    )
    _alarm(
        aws,
        "two-of-three",
        two_versions,
        EvaluationPeriods=3,
        DatapointsToAlarm=2,
        Period=10,
        TreatMissingData="notBreaching",
    )
    evaluate_all_alarms_once()
    assert _state(aws, "missing-breaches")["StateValue"] == "ALARM"

    _early_in_a_period()  # both errors below must fall in one 10-second period
    lam.invoke(FunctionName=two_versions, Qualifier="live", Payload=b'{"raise": "ValueError"}')
    evaluate_all_alarms_once()
    # a period still being filled counts only once it breaches; complete, it counts either way
    assert _state(aws, "missing-is-missing")["StateValue"] == "INSUFFICIENT_DATA"
    evaluate_all_alarms_once(now=datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=60))
    assert _state(aws, "missing-is-missing")["StateValue"] == "OK"
    assert _state(aws, "two-of-three")["StateValue"] == "OK"  # one breaching period of three
    lam.invoke(FunctionName=two_versions, Qualifier="live", Payload=b'{"raise": "ValueError"}')
    evaluate_all_alarms_once()
    assert _state(aws, "two-of-three")["StateValue"] == "OK"  # still one period, now with Sum 2
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
    evaluate_all_alarms_once(now=later)
    assert _state(aws, "missing-is-missing")["StateValue"] == "INSUFFICIENT_DATA"


RECORDER = """
import json, boto3
def handler(event, context):
    boto3.client("s3").put_object(Bucket="alarm-events", Key=context.aws_request_id,
                                  Body=json.dumps(event).encode())
"""


def test_state_change_emits_an_event_and_notifies_the_alarm_actions(aws, two_versions, make_function):
    from .support import handler_zip, wait_for

    s3, events, sns, sqs = (aws.client(s) for s in ("s3", "events", "sns", "sqs"))
    s3.create_bucket(Bucket="alarm-events")
    recorder = make_function(handler_zip(RECORDER))
    recorder_arn = aws.client("lambda").get_function(FunctionName=recorder)["Configuration"]["FunctionArn"]
    events.put_rule(
        Name="alarm-changes",
        EventPattern=json.dumps(
            {
                "source": ["aws.cloudwatch"],
                "detail-type": ["CloudWatch Alarm State Change"],
                "detail": {"state": {"value": ["ALARM"]}},
            }
        ),
    )
    events.put_targets(Rule="alarm-changes", Targets=[{"Id": "recorder", "Arn": recorder_arn}])
    topic = sns.create_topic(Name="alarms")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="alarm-mail")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    _alarm(aws, "gating", two_versions, AlarmActions=[topic])
    evaluate_all_alarms_once()
    aws.client("lambda").invoke(FunctionName=two_versions, Qualifier="live", Payload=b'{"raise": "ValueError"}')
    assert ("gating", "ALARM") in evaluate_all_alarms_once()

    def recorded() -> list[dict]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="alarm-events").get("Contents", [])]
        return [json.loads(s3.get_object(Bucket="alarm-events", Key=k)["Body"].read()) for k in keys]

    event = wait_for(lambda: [e for e in recorded() if e["detail"]["alarmName"] == "gating"])[0]
    assert event["detail"]["alarmName"] == "gating"
    assert event["detail"]["state"]["value"] == "ALARM"
    assert event["detail"]["previousState"]["value"] == "OK"
    message = wait_for(lambda: sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages"))[0]
    assert json.loads(json.loads(message["Body"])["Message"])["NewStateValue"] == "ALARM"


def test_a_new_alarm_starts_with_insufficient_data_and_an_update_keeps_its_state(aws, two_versions):
    _alarm(aws, "fresh", two_versions, TreatMissingData="missing")
    assert _state(aws, "fresh")["StateValue"] == "INSUFFICIENT_DATA"
    _alarm(aws, "fresh", two_versions, TreatMissingData="notBreaching")
    evaluate_all_alarms_once()
    assert _state(aws, "fresh")["StateValue"] == "OK"
    _alarm(aws, "fresh", two_versions, TreatMissingData="notBreaching", Threshold=5)
    assert _state(aws, "fresh")["StateValue"] == "OK"
