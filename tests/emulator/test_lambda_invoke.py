"""Lambda Invoke on the local emulated AWS behaves as AWS does where the rollout depends on it."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from .support import handler_zip, zip_bytes


def invoke(lam: Any, payload: dict | None = None, **kwargs: Any) -> tuple[dict, dict]:
    response = lam.invoke(Payload=json.dumps(payload or {}).encode(), **kwargs)
    return response, json.loads(response["Payload"].read())


def test_qualifier_in_query_string_and_in_name(aws, two_versions):
    lam = aws.client("lambda")
    response, body = invoke(lam, FunctionName=two_versions, Qualifier="1")
    assert (body["version"], body["tag"], response["ExecutedVersion"]) == ("1", "old", "1")
    response, body = invoke(lam, FunctionName=f"{two_versions}:2")
    assert (body["version"], body["tag"], response["ExecutedVersion"]) == ("2", "new", "2")
    response, body = invoke(lam, FunctionName=two_versions, Qualifier="live")
    assert (body["tag"], response["ExecutedVersion"]) == ("old", "1")
    response, body = invoke(lam, FunctionName=two_versions)
    assert (body["version"], response["ExecutedVersion"]) == ("$LATEST", "$LATEST")


def test_a_qualifier_key_in_the_event_is_just_data(aws, two_versions):
    response, body = invoke(aws.client("lambda"), {"qualifier": "1"}, FunctionName=two_versions)
    assert response["ExecutedVersion"] == "$LATEST"
    assert body["echo"] == {"qualifier": "1"}


def test_unknown_qualifier_is_resource_not_found(aws, two_versions):
    with pytest.raises(ClientError) as caught:
        aws.client("lambda").invoke(FunctionName=two_versions, Qualifier="nope")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_weighted_alias_routes_exactly_its_share(aws, two_versions):
    lam = aws.client("lambda")
    lam.update_alias(
        FunctionName=two_versions,
        Name="live",
        FunctionVersion="1",
        RoutingConfig={"AdditionalVersionWeights": {"2": 0.1}},
    )
    executed = []
    for _ in range(100):
        response, body = invoke(lam, FunctionName=two_versions, Qualifier="live")
        assert body["version"] == response["ExecutedVersion"]
        executed.append(response["ExecutedVersion"])
    assert Counter(executed) == {"1": 90, "2": 10}
    assert executed[9] == "2" and executed[:9] == ["1"] * 9

    lam.update_alias(FunctionName=two_versions, Name="live", FunctionVersion="2", RoutingConfig={})
    response, _ = invoke(lam, FunctionName=two_versions, Qualifier="live")
    assert response["ExecutedVersion"] == "2"


def test_unhandled_error_has_lambdas_shape(aws, two_versions):
    response, body = invoke(
        aws.client("lambda"), {"raise": "ValueError", "detail": 7}, FunctionName=two_versions, Qualifier="2"
    )
    assert response["FunctionError"] == "Unhandled"
    assert response["ExecutedVersion"] == "2"
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad input: 7"
    assert body["stackTrace"] and "app.py" in body["stackTrace"][-1]
    assert not any("lambda_bootstrap" in frame for frame in body["stackTrace"])


def test_init_errors_use_the_runtime_error_names(aws, make_function):
    lam = aws.client("lambda")
    missing = make_function(handler_zip("import not_a_module_anywhere\ndef handler(e, c):\n    return 1\n"))
    _, body = invoke(lam, FunctionName=missing)
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "not_a_module_anywhere" in body["errorMessage"]
    no_handler = make_function(handler_zip("def other(e, c):\n    return 1\n"))
    _, body = invoke(lam, FunctionName=no_handler)
    assert body["errorType"] == "Runtime.HandlerNotFound"


def test_timeout_kills_the_environment_and_the_next_invoke_starts_fresh(aws, make_function):
    lam = aws.client("lambda")
    name = make_function(
        handler_zip("""
        import time
        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return context.get_remaining_time_in_millis()
    """),
        Timeout=1,
    )
    started = time.monotonic()
    response, body = invoke(lam, {"sleep": 30}, FunctionName=name)
    assert time.monotonic() - started < 15  # ended at the timeout, not when the handler finished
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    _, remaining = invoke(lam, FunctionName=name)
    assert 0 < remaining <= 1000


def test_each_new_environment_starts_where_init_ended(aws, make_function):
    """Environments are forked from one that ran init: each still has its own process, log
    stream, randomness and module state, and starts from the state init left."""
    lam = aws.client("lambda")
    name = make_function(
        handler_zip("""
        import os, random
        CALLS = 0
        def handler(event, context):
            global CALLS
            CALLS += 1
            if event.get("exit"):
                os._exit(event["exit"])
            return {"calls": CALLS, "pid": os.getpid(), "random": random.random(),
                    "stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"], "context_stream": context.log_stream_name}
    """)
    )
    first = invoke(lam, FunctionName=name)[1]
    assert invoke(lam, FunctionName=name)[1]["calls"] == 2
    response, body = invoke(lam, {"exit": 3}, FunctionName=name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in body["errorMessage"]
    fresh = invoke(lam, FunctionName=name)[1]
    assert fresh["calls"] == 1
    assert fresh["pid"] != first["pid"]
    assert fresh["random"] != first["random"]
    assert fresh["stream"] == fresh["context_stream"] != first["stream"]


def _ended(pid: int) -> bool:
    """Whether a process is gone (here an orphan's zombie may wait for an init that never reaps)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_environments_end_with_their_template_and_the_next_invoke_starts_afresh(aws, make_function):
    import signal

    lam = aws.client("lambda")
    name = make_function(handler_zip("import os\ndef handler(e, c):\n    return [os.getpid(), os.getppid()]\n"))
    pid, template = invoke(lam, FunctionName=name)[1]
    os.kill(template, signal.SIGKILL)
    from .support import wait_for

    wait_for(lambda: _ended(pid), timeout=10)  # the warm environment went with its template
    fresh_pid, fresh_template = invoke(lam, FunctionName=name)[1]
    assert fresh_template != template and fresh_pid != pid


def test_a_runtime_that_exits_during_init_says_so_every_time(aws, make_function):
    lam = aws.client("lambda")
    name = make_function(handler_zip("import os\nos._exit(4)\ndef handler(e, c):\n    return 1\n"))
    for _ in range(2):
        response, body = invoke(lam, FunctionName=name)
        assert response["FunctionError"] == "Unhandled"
        assert body["errorType"] == "Runtime.ExitError"
        assert "exit status 4" in body["errorMessage"]


def test_environment_is_isolated_and_prints_do_not_break_the_protocol(aws, make_function):
    os.environ["LAYERSHIFT_HOST_ONLY"] = "leak"
    try:
        name = make_function(
            handler_zip("""
            import importlib.util, os, sys
            def handler(event, context):
                print("a print goes to the log, not to the caller")
                found = {m: importlib.util.find_spec(m) is not None
                         for m in ("boto3", "botocore", "dateutil", "moto", "pydantic", "pytest")}
                return {"env": dict(os.environ), "found": found, "arn": context.invoked_function_arn}
        """),
            Environment={"Variables": {"MY_SETTING": "on"}},
            MemorySize=256,
        )
        response, body = invoke(aws.client("lambda"), FunctionName=name, LogType="Tail")
    finally:
        del os.environ["LAYERSHIFT_HOST_ONLY"]
    env = body["env"]
    assert "LAYERSHIFT_HOST_ONLY" not in env
    assert env["MY_SETTING"] == "on"
    assert env["AWS_ENDPOINT_URL"] == aws.endpoint_url
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["POWERTOOLS_TRACE_DISABLED"] == "true"
    assert body["found"] == {
        "boto3": True,
        "botocore": True,
        "dateutil": True,
        "moto": False,
        "pydantic": False,
        "pytest": False,
    }
    assert body["arn"].endswith(f":function:{name}")
    import base64

    tail = base64.b64decode(response["LogResult"]).decode()
    assert "a print goes to the log" in tail
    assert "a print goes to the log" in aws.log_path(name).read_text()


def test_handler_calls_aws_through_the_local_endpoint(aws, make_function):
    aws.client("s3").create_bucket(Bucket="from-inside")
    name = make_function(
        handler_zip("""
        import boto3
        def handler(event, context):
            boto3.client("s3").put_object(Bucket="from-inside", Key="k", Body=b"hello")
            return "ok"
    """)
    )
    _, body = invoke(aws.client("lambda"), FunctionName=name)
    assert body == "ok"
    assert aws.client("s3").get_object(Bucket="from-inside", Key="k")["Body"].read() == b"hello"


def test_layers_are_on_the_path_and_later_layers_win(aws, make_function):
    lam = aws.client("lambda")
    first = lam.publish_layer_version(
        LayerName="first",
        Content={"ZipFile": zip_bytes({"python/shared.py": "WHO = 'first'\n", "python/only_first.py": "X = 1\n"})},
    )["LayerVersionArn"]
    second = lam.publish_layer_version(
        LayerName="second",
        Content={"ZipFile": zip_bytes({"python/lib/python3.13/site-packages/shared.py": "WHO = 'second'\n"})},
    )["LayerVersionArn"]
    name = make_function(
        handler_zip("""
        import shared, only_first
        def handler(event, context):
            return [shared.WHO, only_first.X]
    """),
        Layers=[first, second],
    )
    _, body = invoke(lam, FunctionName=name)
    assert body == ["second", 1]


def test_new_code_on_latest_gets_a_new_environment(aws, make_function):
    lam = aws.client("lambda")
    name = make_function(handler_zip("def handler(e, c):\n    return 'one'\n"))
    assert invoke(lam, FunctionName=name)[1] == "one"
    lam.update_function_code(FunctionName=name, ZipFile=handler_zip("def handler(e, c):\n    return 'two'\n"))
    assert invoke(lam, FunctionName=name)[1] == "two"


def test_async_invoke_runs_in_the_background(aws, make_function):
    aws.client("s3").create_bucket(Bucket="async-marks")
    name = make_function(
        handler_zip("""
        import boto3
        def handler(event, context):
            boto3.client("s3").put_object(Bucket="async-marks", Key=event["key"], Body=b"x")
    """)
    )
    response = aws.client("lambda").invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"key": "done"}).encode()
    )
    assert response["StatusCode"] == 202
    from .support import wait_for

    wait_for(lambda: aws.client("s3").list_objects_v2(Bucket="async-marks").get("KeyCount"))


def test_concurrent_invokes_use_a_bounded_pool_of_warm_environments(aws, make_function):
    from concurrent.futures import ThreadPoolExecutor

    lam = aws.client("lambda")
    name = make_function(
        handler_zip("""
        import os, time
        def handler(event, context):
            time.sleep(0.3)
            return os.getpid()
    """)
    )
    with ThreadPoolExecutor(8) as pool:
        pids = list(pool.map(lambda _: invoke(aws.client("lambda"), FunctionName=name)[1], range(8)))
    assert 2 <= len(set(pids)) <= aws.max_workers_per_version
    assert invoke(lam, FunctionName=name)[1] in pids  # warm environments are reused


def test_runtime_picks_the_matching_interpreter(aws, make_function):
    import sys

    from layershift.local.lambda_runtime import InterpreterFinder

    if InterpreterFinder().find("python3.12") == sys.executable:
        pytest.skip("no python3.12 interpreter on this machine")
    name = make_function(
        handler_zip("import sys\ndef handler(e, c):\n    return list(sys.version_info[:2])\n"), Runtime="python3.12"
    )
    assert invoke(aws.client("lambda"), FunctionName=name)[1] == [3, 12]


def test_container_image_functions_say_they_are_not_emulated(aws, role_arn):
    lam = aws.client("lambda")
    lam.create_function(
        FunctionName="from-image",
        Role=role_arn,
        PackageType="Image",
        Code={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:latest"},
    )
    response, body = invoke(lam, FunctionName="from-image")
    assert response["FunctionError"] == "Unhandled"
    assert "not emulated" in body["errorMessage"]
