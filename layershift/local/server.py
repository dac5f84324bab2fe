"""``LocalAws``: the local emulated AWS that layershift runs on when there is no AWS account.

It runs moto's server in this process on 127.0.0.1 and closes the gaps the control plane
depends on with small adapters, each with an ``install``/``uninstall`` pair:

* Lambda invokes run in isolated warm worker subprocesses, honour ``Qualifier`` and alias
  weighted routing, and emit AWS/Lambda metrics (``lambda_invoke``, ``lambda_runtime``,
  ``metrics``);
* metric alarms are evaluated from their definitions (``alarms``);
* EventBridge rules deliver to Lambda and Step Functions targets (``eventbridge``);
* Step Functions executes state machines for real, with optionally scaled Wait states
  (``stepfunctions``), runs Distributed Map states as Map Runs of child executions
  (``distributed_map``), and runs ``codebuild:startBuild.sync`` (``codebuild``, when present);
* optionally, Lambda's control-plane rate limits and the settle time of a function update
  (``lambda_limits``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import os
import threading
import urllib.request
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from layershift.local import (
    alarms,
    dispatch,
    distributed_map,
    eventbridge,
    lambda_invoke,
    lambda_limits,
    metrics,
    stepfunctions,
)
from layershift.local.lambda_runtime import MAX_WORKERS_PER_VERSION, LambdaRuntime

LOG = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# Adapters that live beside this module and are installed when present, each with
# install([aws]) / uninstall(): the codebuild:startBuild(.sync) integration, Lambda RevisionId,
# CodeCommit, layer version permissions as Lambda checks and stores them.
OPTIONAL_ADAPTERS = ("codebuild", "revisions", "codecommit", "layer_policies")

_active_lock = threading.Lock()
_active: list[LocalAws] = []


class LocalAws:
    """The local emulated AWS as a context manager.

    ``root`` is the project directory; state (function logs, unzipped code and layers) goes to
    ``state_dir``, by default ``<root>/.layershift/local``. ``wait_scale`` scales Step Functions
    Wait states (1.0 is real time). ``alarm_interval`` is how often metric alarms are evaluated
    in the background (None: only through ``alarms.evaluate_all_alarms_once()``). ``fault_plan``
    names the fault harness's plan, which every function's fault hook follows
    (``fault_hook.py``). ``call_log`` names a file where every function records each AWS call it
    makes, and as whom (``call_recorder.py``). ``aws_limits`` models Lambda's control-plane rate,
    GetFunction's bucket and the settle time of an update (``lambda_limits.py``); ``set_aws_limits``
    changes them while running. Only one instance runs at a time in a process, because the
    emulated services are process-wide.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        region: str = DEFAULT_REGION,
        wait_scale: float = 1.0,
        alarm_interval: float | None = 1.0,
        max_workers_per_version: int = MAX_WORKERS_PER_VERSION,
        reset: bool = True,
        fault_plan: str | os.PathLike[str] | None = None,
        call_log: str | os.PathLike[str] | None = None,
        aws_limits: lambda_limits.AwsLimits | None = None,
    ) -> None:
        base = Path(root) if root is not None else Path.cwd()
        self.state_dir = Path(state_dir) if state_dir is not None else base / ".layershift" / "local"
        self.region = region
        self.account_id = DEFAULT_ACCOUNT_ID
        self.wait_scale = wait_scale
        self.reset = reset
        self.max_workers_per_version = max_workers_per_version
        self.fault_plan = Path(fault_plan) if fault_plan is not None else None
        self.call_log = Path(call_log) if call_log is not None else None
        self.aws_limits = aws_limits
        self.endpoint_url = ""
        self.port = 0
        self.runtime: LambdaRuntime | None = None
        self._server: ThreadedMotoServer | None = None
        self._evaluator = alarms.AlarmEvaluator(alarm_interval) if alarm_interval else None
        self._previous_moto_port: str | None = None
        self._uninstallers: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> LocalAws:
        with _active_lock:
            if _active:
                raise RuntimeError("a LocalAws is already running in this process; stop it first")
            _active.append(self)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The server's per-request access log is noise for a local control plane.
        if logging.getLogger("werkzeug").level <= logging.INFO:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # The ASL interpreter logs every state failure at ERROR, including the ones a Catch handles
        # by design; the execution history already records each one.
        if logging.getLogger("moto.stepfunctions.parser").level <= logging.ERROR:
            logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        # Port 0: the operating system picks a free port, so there is no race with other servers.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        _, self.port = self._server.get_host_and_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        # The Step Functions interpreter calls the services at localhost:$MOTO_PORT.
        self._previous_moto_port = os.environ.get("MOTO_PORT")
        os.environ["MOTO_PORT"] = str(self.port)
        if self.reset:
            self._moto_api("reset", None)
        self._moto_api("config", {"stepfunctions": {"execute_state_machine": True}})

        self.runtime = LambdaRuntime(
            self.state_dir,
            self.endpoint_url,
            self.region,
            max_workers_per_version=self.max_workers_per_version,
            fault_plan=self.fault_plan,
            call_log=self.call_log,
        )
        self._install(dispatch.install, dispatch.uninstall)
        self._install(metrics.install, metrics.uninstall)
        self._install(lambda: lambda_invoke.install(self.runtime), lambda_invoke.uninstall)  # type: ignore[arg-type]
        self._install(alarms.install, alarms.uninstall)
        self._install(lambda: eventbridge.install(self.endpoint_url), eventbridge.uninstall)
        self._install(lambda: stepfunctions.install(self.wait_scale), stepfunctions.uninstall)
        self._install(distributed_map.install, distributed_map.uninstall)
        for name in OPTIONAL_ADAPTERS:
            if importlib.util.find_spec(f"layershift.local.{name}") is None:
                continue
            adapter = importlib.import_module(f"layershift.local.{name}")
            takes_aws = bool(inspect.signature(adapter.install).parameters)
            self._install(partial(adapter.install, self) if takes_aws else adapter.install, adapter.uninstall)
        # Last, so its wrappers of the Lambda service see every other adapter's behaviour.
        self._install(lambda: lambda_limits.install(self.aws_limits), lambda_limits.uninstall)
        if self._evaluator is not None:
            self._evaluator.start()

    def set_aws_limits(self, limits: lambda_limits.AwsLimits | None) -> None:
        """Model ``limits`` from now on (with full buckets), or none."""
        self.aws_limits = limits
        if limits is None:
            lambda_limits.disable()
        else:
            lambda_limits.enable(limits)

    def _install(self, install: Any, uninstall: Any) -> None:
        install()
        self._uninstallers.append(uninstall)

    def _moto_api(self, action: str, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/{action}", data=data, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        """Stop the alarm evaluator, the function workers and the server; undo every patch."""
        if self._evaluator is not None:
            self._evaluator.stop()
        if self.runtime is not None:
            self.runtime.close()  # first, so background invokes fail fast instead of holding up the stop
        while self._uninstallers:
            uninstall = self._uninstallers.pop()
            try:
                uninstall()
            except Exception:
                LOG.exception("could not undo a local adapter")
        self.runtime = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._previous_moto_port is None:
            os.environ.pop("MOTO_PORT", None)
        else:
            os.environ["MOTO_PORT"] = self._previous_moto_port
        self._previous_moto_port = None
        with _active_lock:
            if self in _active:
                _active.remove(self)

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------------

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for ``service`` on the local endpoint, with dummy local credentials."""
        if not self.endpoint_url:
            raise RuntimeError("LocalAws is not started")
        kwargs.setdefault("config", Config(retries={"max_attempts": 3, "mode": "standard"}))
        return boto3.session.Session().client(
            service, region_name=self.region, endpoint_url=self.endpoint_url, **LOCAL_CREDENTIALS, **kwargs
        )

    def environment(self) -> dict[str, str]:
        """Environment variables that point an AWS SDK or CLI at this local AWS."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
        }

    def log_path(self, function_name: str) -> Path:
        """The log file of a function's execution environments."""
        return self.state_dir / "logs" / f"{function_name}.log"
