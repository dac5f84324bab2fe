"""The runtime loop of one local Lambda execution environment (standard library only).

Started as ``python -I -S lambda_bootstrap.py`` with the function's code directory as the
working directory. It speaks JSON lines with its parent:

* first line in: ``{"handler": "app.handler", "sys_path": [...], "function": {...}}``;
* first line out: ``{"type": "ready"}`` (an init failure is kept and returned on every invoke,
  as the Python runtime of Lambda does);
* then per invoke in: ``{"id": ..., "event": <json text>, "deadline_ms": <epoch ms>}`` and out:
  ``{"id": ..., "ok": true, "payload": <json text>}`` or
  ``{"id": ..., "ok": false, "error": {"errorMessage", "errorType", "stackTrace"}}``.

The handler's own stdout is moved to stderr before any user code runs, so a ``print`` cannot
corrupt the protocol; stderr is the function's log.

With ``LAYERSHIFT_FORK_FD`` set, the process is a template: it runs the init phase once, says
ready, and then, instead of taking invokes, forks a fresh execution environment for each request
on that Unix socket (a datagram ``{"log_stream_name": ...}`` carrying the child's stdin, stdout
and stderr), answers ``{"forked": pid}``, and reports ``{"exited": pid, "status": code}`` when a
child ends. A request ``{"kill": pid}`` kills one of its children. Each child starts where init
ended, like a Lambda SnapStart restore, and then speaks the protocol above from the ready line on.

With ``LAYERSHIFT_LOCAL_CALL_LOG`` set, ``call_recorder.py`` records every AWS call the function
makes (its init included) in that file.
"""

import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

_PROTOCOL = None


def _protocol_stream():
    """Keep a private copy of stdout for the protocol, then point fd 1 at stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    return os.fdopen(proto_fd, "w", buffering=1, encoding="utf-8")


def _send(message):
    _PROTOCOL.write(json.dumps(message, separators=(",", ":")) + "\n")
    _PROTOCOL.flush()


def _log(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _error(message, error_type, stack=None):
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}


def _error_from_exception(exc):
    # Like Lambda's runtime, report the user's frames only.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    stack = traceback.format_list(frames)
    return _error(str(exc), type(exc).__name__, stack)


def _load_handler(handler):
    """Resolve ``module.function`` the way the Lambda Python runtime does, with its error names."""
    try:
        module_name, function_name = handler.rsplit(".", 1)
    except ValueError as exc:
        return None, _error(f"Bad handler '{handler}': {exc}", "Runtime.MalformedHandlerName")
    if module_name.split(".")[0] in sys.builtin_module_names:
        return None, _error(
            f"Cannot use built-in module {module_name} as a handler module", "Runtime.BuiltInModuleConflict"
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        return None, _error(f"Unable to import module '{module_name}': {exc}", "Runtime.ImportModuleError")
    except SyntaxError as exc:
        stack = traceback.format_list(traceback.extract_tb(exc.__traceback__))
        return None, _error(f"Syntax error in module '{module_name}': {exc}", "Runtime.UserCodeSyntaxError", stack)
    except Exception as exc:
        return None, _error_from_exception(exc)
    function = getattr(module, function_name, None)
    if function is None:
        return None, _error(f"Handler '{function_name}' missing on module '{module_name}'", "Runtime.HandlerNotFound")
    return function, None


class LambdaContext:
    """The subset of the Lambda context object that handlers use."""

    def __init__(self, function, request_id, deadline_ms, client_context=None):
        self.function_name = function["name"]
        self.function_version = function["version"]
        self.invoked_function_arn = function["invoked_arn"]
        self.memory_limit_in_mb = int(function["memory_size"])
        self.aws_request_id = request_id
        self.log_group_name = function["log_group_name"]
        self.log_stream_name = function["log_stream_name"]
        self.identity = None
        self.client_context = client_context
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _harness_module(variable, filename):
    """A harness module beside this file (the fault hook, the call recorder), when ``variable`` is set."""
    if not os.environ.get(variable):
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(f"layershift_{filename.removesuffix('.py')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    global _PROTOCOL
    _PROTOCOL = _protocol_stream()
    init = json.loads(sys.stdin.readline())
    sys.path[:0] = init["sys_path"]
    function_config = init["function"]
    hook = _harness_module("LAYERSHIFT_FAULT_PLAN", "fault_hook.py")
    recorder = _harness_module("LAYERSHIFT_LOCAL_CALL_LOG", "call_recorder.py")
    if recorder is not None:
        recorder.install(function_config)  # before the handler's imports: init's calls count too
    handler, init_error = _load_handler(init["handler"])
    if init_error is not None:
        _log(f"[ERROR] {init_error['errorType']}: {init_error['errorMessage']}")
    _send({"type": "ready"})
    fork_fd = os.environ.pop("LAYERSHIFT_FORK_FD", None)
    if fork_fd is not None:
        # only a forked child returns
        function_config["log_stream_name"] = _serve_forks(socket.socket(fileno=int(fork_fd)))
        _send({"type": "ready"})

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        request_id = request["id"]
        function_config["invoked_arn"] = request.get("invoked_arn", function_config["invoked_arn"])
        _log(f"START RequestId: {request_id} Version: {function_config['version']}")
        started = time.monotonic()
        if init_error is not None:
            reply = {"id": request_id, "ok": False, "error": init_error}
        else:
            reply = _invoke(handler, request, function_config, hook)
        duration_ms = (time.monotonic() - started) * 1000
        _log(f"END RequestId: {request_id}")
        _log(
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
            f"Memory Size: {function_config['memory_size']} MB"
        )
        reply["duration_ms"] = duration_ms
        _send(reply)


def _serve_forks(control):
    """The template's loop: fork children on request, report their ends. Returns in a child only,
    with the child's log stream name, once the child has its own stdio."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    prctl = _prctl()
    children = set()
    while True:
        readable, _, _ = select.select([control, wake_read], [], [])
        if wake_read in readable:
            os.read(wake_read, 4096)
            _reap(children, control)
        if control not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(control, 65536, 3)
        if not message:  # the parent closed its end: children first, then this template
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            os._exit(0)
        request = json.loads(message)
        if "kill" in request:
            if request["kill"] in children:
                os.kill(request["kill"], signal.SIGKILL)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        template = os.getpid()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write, control.detach()):
                os.close(fd)
            _become_child(*fds)
            _die_with(template, prctl)
            os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = request["log_stream_name"]
            return request["log_stream_name"]
        for fd in fds:
            os.close(fd)
        children.add(pid)
        control.send(json.dumps({"forked": pid}).encode())


def _reap(children, control):
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        control.send(json.dumps({"exited": pid, "status": os.waitstatus_to_exitcode(status)}).encode())


def _become_child(stdin_fd, stdout_fd, stderr_fd):
    """Take the stdio the parent sent; the handler's stdout stays pointed at the log."""
    global _PROTOCOL
    os.dup2(stdin_fd, 0)
    os.dup2(stderr_fd, 2)
    os.dup2(stderr_fd, 1)
    for fd in (stdin_fd, stderr_fd):
        os.close(fd)
    _PROTOCOL.close()
    _PROTOCOL = os.fdopen(stdout_fd, "w", buffering=1, encoding="utf-8")
    sys.stdin = os.fdopen(0, "r", encoding="utf-8", closefd=False)


def _prctl():
    try:
        import ctypes

        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def _die_with(template, prctl):
    """A child must not outlive its template (Linux; elsewhere the closed stdin ends it)."""
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != template:
        os._exit(1)


def _failure(request_id, exc):
    error = _error_from_exception(exc)
    _log(f"[ERROR] {error['errorType']}: {error['errorMessage']}\nTraceback (most recent call last):")
    for frame in error["stackTrace"]:
        sys.stderr.write(frame)
    sys.stderr.flush()
    return {"id": request_id, "ok": False, "error": error}


def _invoke(handler, request, function_config, hook=None):
    request_id = request["id"]
    try:
        event = json.loads(request["event"]) if request["event"] else {}
    except ValueError as exc:
        return {"id": request_id, "ok": False, "error": _error(str(exc), "Runtime.UnmarshalError")}
    if hook is not None:
        hook.begin(event)
    timeout = request["deadline_ms"] / 1000 - time.time()
    context = LambdaContext(function_config, request_id, request["deadline_ms"], request.get("client_context"))
    try:
        result = handler(event, context)
    except BaseException as exc:
        if hook is None or not isinstance(exc, hook.InjectedTimeout):
            if not isinstance(exc, Exception):
                raise
            return _failure(request_id, exc)
        # the fault harness's timeout: reported as Lambda reports one (the runtime then ends this
        # execution environment, as Lambda does)
        message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
        _log(message)
        return {"id": request_id, "ok": False, "error": _error(message, "Sandbox.Timedout")}
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as exc:
        return {
            "id": request_id,
            "ok": False,
            "error": _error(f"Unable to marshal response: {exc}", "Runtime.MarshalError"),
        }
    return {"id": request_id, "ok": True, "payload": payload}


if __name__ == "__main__":
    main()
