"""Local Lambda execution environments: a pool of warm worker processes per function version.

A version's first cold start runs ``lambda_bootstrap.py`` under ``python -I -S`` as a template,
with a Lambda-like ``sys.path`` (task root, the layers, then a runtime directory holding only what
Lambda's Python runtime ships) and a Lambda-like environment (the function's variables plus the
local endpoint and dummy credentials; nothing else from the host). The template runs init once;
every execution environment of the version is a process forked from it. Code and layers are
unzipped from the emulated Lambda service into the state directory, keyed by sha256.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from layershift_core.builder.platforms import find_interpreter

LOG = logging.getLogger(__name__)

BOOTSTRAP = Path(__file__).resolve().with_name("lambda_bootstrap.py")

# What the Lambda Python runtime ships besides the standard library (import name, distribution).
RUNTIME_PACKAGES = (
    ("boto3", "boto3"),
    ("botocore", "botocore"),
    ("s3transfer", "s3transfer"),
    ("jmespath", "jmespath"),
    ("dateutil", "python-dateutil"),
    ("urllib3", "urllib3"),
    ("six", "six"),
)

MAX_WORKERS_PER_VERSION = 4
INIT_LIMIT_SECONDS = 10.0
FORK_LIMIT_SECONDS = 10.0
EXIT_LIMIT_SECONDS = 5.0
LOG_TAIL_BYTES = 4096


@dataclass
class InvokeResult:
    """The outcome of one invocation, in Lambda's terms."""

    payload: bytes
    errored: bool
    duration_ms: float
    logs: str = ""
    error_type: str | None = None


@dataclass(frozen=True)
class FunctionSpec:
    """Everything that defines one execution environment of a function version."""

    function_name: str
    function_arn: str
    version: str
    runtime: str
    handler: str
    timeout: float
    memory_size: int
    environment: tuple[tuple[str, str], ...]
    code_sha256: str
    layer_arns: tuple[str, ...]
    role_arn: str = ""

    @property
    def pool_key(self) -> tuple[str, str]:
        return (self.function_arn, self.version)


@dataclass(frozen=True)
class Launch:
    """How to start a bootstrap process: its command, environment, directory and init message."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    init_message: dict[str, Any]


class EnvironmentUnavailable(Exception):
    """Raised when the local Lambda service cannot run an execution environment."""


class InitFailed(Exception):
    """The init phase of a new execution environment failed (it timed out or the runtime exited)."""


def _init_limit(spec: FunctionSpec) -> float:
    """How long a new execution environment may take to say ready."""
    return max(INIT_LIMIT_SECONDS, spec.timeout)


def error_payload(message: str, error_type: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type}).encode()


class InterpreterFinder:
    """Finds a python3.X interpreter that matches a Lambda runtime name, once per runtime."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def find(self, runtime: str) -> str:
        with self._lock:
            if runtime not in self._found:
                self._found[runtime] = self._search(runtime)
            return self._found[runtime]

    def _search(self, runtime: str) -> str:
        match = re.fullmatch(r"python(3\.\d+)", runtime or "")
        if not match:
            return sys.executable
        minor = match.group(1)
        found = find_interpreter(minor)
        if found:
            return found
        if runtime not in self._warned:
            self._warned.add(runtime)
            LOG.warning(
                "No working python%s interpreter found for runtime %s; running it with %s (Python %s.%s). "
                "Install python%s to emulate this runtime faithfully.",
                minor,
                runtime,
                sys.executable,
                sys.version_info.major,
                sys.version_info.minor,
                minor,
            )
        return sys.executable


class Worker:
    """One execution environment: a bootstrap process, its protocol and its log readers.

    ``process`` is a ``subprocess.Popen`` or a ``ForkedProcess``; the streams are its stdin,
    stdout (the protocol) and stderr (the log), as text.
    """

    def __init__(
        self,
        spec: FunctionSpec,
        process: subprocess.Popen[str] | ForkedProcess,
        streams: tuple[IO[str], IO[str], IO[str]],
        log_sink: LogSink,
    ) -> None:
        self.spec = spec
        self.process = process
        self._stdin, stdout, stderr = streams
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._log_sink = log_sink
        self._log_lines: list[str] = []
        self._log_done: dict[str, threading.Event] = {}
        self._log_lock = threading.Lock()
        name = spec.function_name
        threading.Thread(target=self._read_replies, args=(stdout,), daemon=True, name=f"lambda-out-{name}").start()
        threading.Thread(target=self._read_logs, args=(stderr,), daemon=True, name=f"lambda-log-{name}").start()

    @classmethod
    def start(cls, spec: FunctionSpec, launch: Launch, log_sink: LogSink, pass_fds: tuple[int, ...] = ()) -> Worker:
        """Start a bootstrap process and send it the init message."""
        process = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=launch.env,
            cwd=str(launch.cwd),
            text=True,
            encoding="utf-8",
            errors="backslashreplace",
            bufsize=1,
            pass_fds=pass_fds,
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        worker = cls(spec, process, (process.stdin, process.stdout, process.stderr), log_sink)
        worker._write(launch.init_message)
        return worker

    def _write(self, message: dict[str, Any]) -> None:
        self._stdin.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._stdin.flush()

    def _read_replies(self, stdout: IO[str]) -> None:
        for line in stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                LOG.warning("unreadable reply from %s: %r", self.spec.function_name, line[:200])
        self._replies.put(None)

    def _read_logs(self, stderr: IO[str]) -> None:
        for line in stderr:
            self._log_sink.write(self.spec.function_name, line)
            with self._log_lock:
                self._log_lines.append(line)
                if line.startswith("END RequestId: "):
                    request_id = line.split(":", 1)[1].strip()
                    self._log_done.setdefault(request_id, threading.Event()).set()
        with self._log_lock:
            for event in self._log_done.values():
                event.set()

    def wait_ready(self, timeout: float) -> str | None:
        """Wait for the init phase; return an error description, or None when ready."""
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            return f"Init phase did not finish within {timeout:.0f} seconds"
        if reply is None:
            return f"Runtime exited with error: exit status {self._exit_status()}"
        return None

    def invoke(self, event: bytes, request_id: str, invoked_arn: str, timeout: float) -> InvokeResult:
        started = time.monotonic()
        deadline_ms = time.time() * 1000 + timeout * 1000
        with self._log_lock:
            self._log_lines = []
            self._log_done[request_id] = threading.Event()
        try:
            self._write(
                {
                    "id": request_id,
                    "event": event.decode("utf-8"),
                    "deadline_ms": deadline_ms,
                    "invoked_arn": invoked_arn,
                }
            )
        except (BrokenPipeError, OSError):
            return self._exited(request_id, started)
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            duration = (time.monotonic() - started) * 1000
            message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
            self._log_sink.write(self.spec.function_name, f"{message}\n")
            return InvokeResult(
                error_payload(message, "Sandbox.Timedout"),
                True,
                duration,
                self._take_logs(request_id) + message + "\n",
                "Sandbox.Timedout",
            )
        if reply is None:
            return self._exited(request_id, started)
        duration = float(reply.get("duration_ms", (time.monotonic() - started) * 1000))
        logs = self._take_logs(request_id)
        if reply.get("ok"):
            return InvokeResult(reply["payload"].encode("utf-8"), False, duration, logs)
        error = reply["error"]
        if error.get("errorType") == "Sandbox.Timedout":
            self.kill()  # Lambda does not reuse an execution environment after a timeout
        return InvokeResult(json.dumps(error).encode("utf-8"), True, duration, logs, error.get("errorType"))

    def _exit_status(self) -> str:
        try:
            return str(self.process.wait(timeout=EXIT_LIMIT_SECONDS))
        except subprocess.TimeoutExpired:
            return "unknown"

    def _exited(self, request_id: str, started: float) -> InvokeResult:
        message = f"RequestId: {request_id} Error: Runtime exited with error: exit status {self._exit_status()}"
        return InvokeResult(
            error_payload(message, "Runtime.ExitError"),
            True,
            (time.monotonic() - started) * 1000,
            self._take_logs(request_id),
            "Runtime.ExitError",
        )

    def _take_logs(self, request_id: str) -> str:
        with self._log_lock:
            done = self._log_done.get(request_id)
        if done is not None:
            done.wait(timeout=1.0)
        with self._log_lock:
            self._log_done.pop(request_id, None)
            lines, self._log_lines = self._log_lines, []
        return "".join(lines)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=EXIT_LIMIT_SECONDS)
        except subprocess.TimeoutExpired:
            LOG.warning("worker of %s did not exit", self.spec.function_name)
        with contextlib.suppress(OSError):
            self._stdin.close()


class ForkedProcess:
    """A template's child, with the part of ``Popen``'s interface that ``Worker`` uses."""

    def __init__(self, pid: int, template: Template) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._template = template
        self._ended = threading.Event()

    def ended(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self._template.kill_child(self.pid)


class Template:
    """A bootstrap process that ran a function version's init phase once and forks fresh
    execution environments from there (``lambda_bootstrap``'s template mode).

    Starting an environment then costs a fork instead of an interpreter start and the handler's
    imports, which are most of a control-plane handler's cold start (Powertools, pydantic and
    boto3). Each child is a fresh environment: its own process, stdio, log stream and module
    state, as of the end of init.
    """

    def __init__(self, spec: FunctionSpec, launch: Launch, log_sink: LogSink) -> None:
        self.spec = spec
        self._log_sink = log_sink
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = {**launch.env, "LAYERSHIFT_FORK_FD": str(theirs.fileno())}
            launch = replace(launch, env=env)
            self._init = Worker.start(spec, launch, log_sink, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._control = ours
        self._children: dict[int, ForkedProcess] = {}
        self._forked: queue.Queue[ForkedProcess | None] = queue.Queue()
        self._fork_lock = threading.Lock()
        self._lock = threading.Lock()
        self._gone = False
        threading.Thread(target=self._read_control, daemon=True, name=f"lambda-fork-{spec.function_name}").start()

    def wait_ready(self, timeout: float) -> str | None:
        return self._init.wait_ready(timeout)

    @property
    def alive(self) -> bool:
        return not self._gone and self._init.alive

    def fork(self, log_stream_name: str) -> Worker:
        """A new execution environment, forked from the end of init."""
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            with self._fork_lock:
                request = json.dumps({"log_stream_name": log_stream_name}).encode()
                socket.send_fds(self._control, [request], [stdin_r, stdout_w, stderr_w])
                process = self._forked.get(timeout=FORK_LIMIT_SECONDS)
        except (OSError, queue.Empty) as exc:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise OSError(f"the execution environment's template did not fork: {exc or 'no answer'}") from exc
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        if process is None:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise OSError("the execution environment's template has exited")
        streams = (  # the worker owns them from here
            open(stdin_w, "w", encoding="utf-8", buffering=1),  # noqa: SIM115
            open(stdout_r, encoding="utf-8", errors="backslashreplace"),  # noqa: SIM115
            open(stderr_r, encoding="utf-8", errors="backslashreplace"),  # noqa: SIM115
        )
        return Worker(self.spec, process, streams, self._log_sink)

    def _read_control(self) -> None:
        while True:
            try:
                message = self._control.recv(65536)
            except OSError:
                message = b""
            if not message:
                break
            reply = json.loads(message)
            if "forked" in reply:
                process = ForkedProcess(reply["forked"], self)
                with self._lock:
                    self._children[process.pid] = process
                self._forked.put(process)
            elif "exited" in reply:
                with self._lock:
                    ended = self._children.pop(reply["exited"], None)
                if ended is not None:
                    ended.ended(reply["status"])
        # The template is gone, and its children with it (they die with their parent).
        with self._lock:
            self._gone = True
            orphans, self._children = list(self._children.values()), {}
        self._forked.put(None)
        for process in orphans:
            process.ended(-signal.SIGKILL)
        self._control.close()

    def kill_child(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            self._control.send(json.dumps({"kill": pid}).encode())

    def kill(self) -> None:
        """End the template; its children end with it."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._init.kill()


class LogSink:
    """Appends every worker's stderr to ``logs/<function>.log`` under the state directory."""

    def __init__(self, log_dir: Path) -> None:
        self._dir = log_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, function_name: str) -> Path:
        return self._dir / f"{function_name}.log"

    def write(self, function_name: str, text: str) -> None:
        with self._lock, open(self.path(function_name), "a", encoding="utf-8") as handle:
            handle.write(text)


@dataclass
class _Pool:
    spec: FunctionSpec
    idle: list[Worker] = field(default_factory=list)
    total: int = 0
    template: Template | None = None
    starting: threading.Lock = field(default_factory=threading.Lock)


class LambdaRuntime:
    """Runs function versions in warm, isolated worker subprocesses against the local endpoint."""

    def __init__(
        self,
        state_dir: Path,
        endpoint_url: str,
        region: str,
        max_workers_per_version: int = MAX_WORKERS_PER_VERSION,
        fault_plan: Path | None = None,
        call_log: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        # The fault harness's plan, which every worker's fault hook follows (fault_hook.py).
        self.fault_plan = fault_plan
        # Where every worker records the AWS calls its function makes (call_recorder.py).
        self.call_log = call_log
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_workers = max_workers_per_version
        self.logs = LogSink(self.state_dir / "logs")
        self.interpreters = InterpreterFinder()
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._workers: set[Worker] = set()
        self._cond = threading.Condition()
        self._extract_lock = threading.Lock()
        self._closed = False
        self._runtime_dir: Path | None = None
        self._aws_config = self.state_dir / "aws-config"

    # -- preparation -------------------------------------------------------------------------

    def runtime_dir(self) -> Path:
        """A directory with only what Lambda's Python runtime ships, linked from this host."""
        with self._extract_lock:
            if self._runtime_dir is not None:
                return self._runtime_dir
            target = self.state_dir / "runtime"
            target.mkdir(parents=True, exist_ok=True)
            for module, distribution in RUNTIME_PACKAGES:
                spec = importlib.util.find_spec(module)
                if spec is None or spec.origin is None:
                    LOG.warning("%s is not installed on this host; functions will not find it", module)
                    continue
                origin = Path(spec.origin)
                source = origin.parent if origin.name == "__init__.py" else origin
                self._link(source, target / source.name)
                try:
                    dist_path = getattr(importlib.metadata.distribution(distribution), "_path", None)
                except importlib.metadata.PackageNotFoundError:
                    dist_path = None
                if dist_path is not None:
                    self._link(Path(dist_path), target / Path(dist_path).name)
            self._runtime_dir = target
            return target

    @staticmethod
    def _link(source: Path, link: Path) -> None:
        if link.is_symlink() and Path(os.readlink(link)) == source:
            return
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(source, target_is_directory=source.is_dir())

    def extract(self, kind: str, data: bytes) -> Path:
        """Unzip ``data`` once into ``<state>/<kind>/<sha256>`` and return the directory."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.state_dir / kind / digest
        with self._extract_lock:
            if target.is_dir():
                return target
            staging = target.with_name(f".{digest}.{uuid.uuid4().hex}")
            staging.mkdir(parents=True)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                archive.extractall(staging)
            staging.rename(target)
            return target

    def _sys_path(self, spec: FunctionSpec, task_root: Path, layer_dirs: list[Path]) -> list[str]:
        # Lambda unzips layers into /opt in order, later layers overwriting earlier ones, and
        # puts /opt/python/lib/python3.X/site-packages before /opt/python. With one directory
        # per layer, the same precedence is: every site-packages dir (last layer first), then
        # every python dir (last layer first).
        minor = spec.runtime.removeprefix("python") if spec.runtime.startswith("python") else ""
        site = [d / "python" / "lib" / f"python{minor}" / "site-packages" for d in reversed(layer_dirs)]
        plain = [d / "python" for d in reversed(layer_dirs)]
        return [str(task_root), *(str(p) for p in site + plain), str(self.runtime_dir())]

    def _environment(self, spec: FunctionSpec, task_root: Path, log_stream: str) -> dict[str, str]:
        self._aws_config.mkdir(parents=True, exist_ok=True)
        (self._aws_config / "config").touch()
        (self._aws_config / "credentials").touch()
        env = dict(spec.environment)
        env.update(
            {
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_SESSION_TOKEN": "testing",
                "AWS_CONFIG_FILE": str(self._aws_config / "config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self._aws_config / "credentials"),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
                "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "LAMBDA_TASK_ROOT": str(task_root),
                "LAMBDA_RUNTIME_DIR": str(self.runtime_dir()),
                "_HANDLER": spec.handler,
                "POWERTOOLS_TRACE_DISABLED": "true",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "en_US.UTF-8",
                "TZ": ":UTC",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.fault_plan is not None:
            env["LAYERSHIFT_FAULT_PLAN"] = str(self.fault_plan)
        if self.call_log is not None:
            env["LAYERSHIFT_LOCAL_CALL_LOG"] = str(self.call_log)
        return env

    # -- pool ----------------------------------------------------------------------------------

    def _start_worker(self, pool: _Pool, code: bytes, layers: list[bytes]) -> Worker:
        """A new execution environment, forked from the pool's template (which runs init first)."""
        with pool.starting:
            if pool.template is None or not pool.template.alive:
                if pool.template is not None:  # it died: start another
                    pool.template.kill()
                    pool.template = None
                pool.template = self._start_template(pool.spec, code, layers)
            return pool.template.fork(self._log_stream(pool.spec))

    def _start_template(self, spec: FunctionSpec, code: bytes, layers: list[bytes]) -> Template:
        """A template that has run ``spec``'s init phase; raises InitFailed when init does not finish."""
        task_root = self.extract("code", code)
        layer_dirs = [self.extract("layers", data) for data in layers]
        log_stream = self._log_stream(spec)
        init = {
            "handler": spec.handler,
            "sys_path": self._sys_path(spec, task_root, layer_dirs),
            "function": {
                "name": spec.function_name,
                "version": spec.version,
                "invoked_arn": spec.function_arn,
                "role_arn": spec.role_arn,
                "memory_size": spec.memory_size,
                "log_group_name": f"/aws/lambda/{spec.function_name}",
                "log_stream_name": log_stream,
            },
        }
        launch = Launch(
            argv=[self.interpreters.find(spec.runtime), "-I", "-S", str(BOOTSTRAP)],
            env=self._environment(spec, task_root, log_stream),
            cwd=task_root,
            init_message=init,
        )
        template = Template(spec, launch, self.logs)
        problem = template.wait_ready(_init_limit(spec))
        if problem is not None:
            template.kill()
            raise InitFailed(problem)
        return template

    @staticmethod
    def _log_stream(spec: FunctionSpec) -> str:
        now = time.gmtime()
        return f"{now.tm_year}/{now.tm_mon:02d}/{now.tm_mday:02d}/[{spec.version}]{uuid.uuid4().hex}"

    def _acquire(self, spec: FunctionSpec) -> tuple[Worker | None, _Pool]:
        with self._cond:
            while True:
                if self._closed:
                    raise EnvironmentUnavailable("the local Lambda service is stopped")
                pool = self._pools.get(spec.pool_key)
                if pool is None or pool.spec != spec:
                    # New code or configuration for this version ($LATEST changes): retire the old pool.
                    if pool is not None:
                        self._retire(pool)
                    pool = self._pools[spec.pool_key] = _Pool(spec)
                while pool.idle:
                    worker = pool.idle.pop()
                    if worker.alive:
                        return worker, pool
                    pool.total -= 1
                if pool.total < self.max_workers:
                    pool.total += 1
                    return None, pool
                self._cond.wait(timeout=1.0)

    def _retire(self, pool: _Pool) -> None:
        """Stop a pool's idle environments; its template goes with its last environment."""
        for worker in pool.idle:
            self._workers.discard(worker)
            worker.kill()
        pool.total -= len(pool.idle)
        pool.idle = []
        if pool.total == 0 and pool.template is not None:
            pool.template.kill()

    def _release(self, pool: _Pool, worker: Worker | None) -> None:
        with self._cond:
            current = self._pools.get(pool.spec.pool_key) is pool and not self._closed
            if worker is not None and worker.alive and current:
                pool.idle.append(worker)
            else:
                pool.total -= 1
                if worker is not None:
                    self._workers.discard(worker)
                    worker.kill()
                if not current:
                    self._retire(pool)
            self._cond.notify_all()

    def invoke(
        self,
        spec: FunctionSpec,
        code: bytes,
        layers: list[bytes],
        event: bytes,
        invoked_arn: str,
        request_id: str | None = None,
    ) -> InvokeResult:
        """Run one invocation of ``spec`` with ``event`` (JSON bytes) and return Lambda's outcome."""
        request_id = request_id or str(uuid.uuid4())
        worker, pool = self._acquire(spec)
        try:
            if worker is None:
                started = time.monotonic()
                try:
                    worker = self._start_worker(pool, code, layers)
                    with self._cond:
                        self._workers.add(worker)
                    problem = worker.wait_ready(_init_limit(spec))
                except InitFailed as exc:
                    problem = str(exc)
                except (OSError, zipfile.BadZipFile) as exc:
                    message = f"RequestId: {request_id} Error: could not start the execution environment: {exc}"
                    return InvokeResult(error_payload(message, "Runtime.Unknown"), True, 0.0, "", "Runtime.Unknown")
                if problem is not None:
                    if worker is not None:
                        worker.kill()
                    message = f"RequestId: {request_id} Error: {problem}"
                    return InvokeResult(
                        error_payload(message, "Runtime.ExitError"),
                        True,
                        (time.monotonic() - started) * 1000,
                        "",
                        "Runtime.ExitError",
                    )
            return worker.invoke(event, request_id, invoked_arn, spec.timeout)
        finally:
            self._release(pool, worker)

    def close(self) -> None:
        """Stop every worker and template."""
        with self._cond:
            self._closed = True
            templates = [pool.template for pool in self._pools.values() if pool.template is not None]
            self._pools = {}
            workers, self._workers = list(self._workers), set()
            self._cond.notify_all()
        for worker in workers:
            worker.kill()
        for template in templates:
            template.kill()


def tail_logs(logs: str) -> str:
    """The base64 ``LogResult`` of a ``LogType=Tail`` invoke: the last 4 KB of the log."""
    return base64.b64encode(logs.encode("utf-8")[-LOG_TAIL_BYTES:]).decode()
