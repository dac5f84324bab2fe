import json, time
from tests.integration.support import create_consumer, publish_bootstrap_layer, start_rollout, spec, create_alarm, wait_for_state
from layershift.controlplane import wait_for_end, history_events, describe_event

def test_dbg(control_plane):
    cp = control_plane
    first = publish_bootstrap_layer(cp, "dbg")
    create_consumer(cp, "dbg-fn", [first])
    create_alarm(cp, "dbg-alarm", "dbg-fn")
    arn = start_rollout(cp, "dbg", "six==1.16.0\n", spec("[{weight = 10, bake_seconds = 30}]", '["dbg-alarm"]'))
    wait_for_state(cp, arn, "BakeAndWatch")
    from layershift import controlplane
    controlplane.abort(cp, "dbg", "dbg abort")
    described = wait_for_end(cp, arn, poll=0.3, timeout=600)
    history = history_events(cp, arn)
    for e in history:
        line = describe_event(e)
        if line: print(line)
    print(described["status"], described.get("error"), described.get("cause"))
    sfn = cp.client("stepfunctions")
    for e in history:
        if e["type"].startswith("TaskFailed") or e["type"] == "TaskSucceeded" and "summary" in json.dumps(e, default=str):
            print(json.dumps(e, default=str)[:1500])
    from layershift.invariants import check_invariants
    print(check_invariants(cp, arn))
