"""CodeCommit on the local emulated AWS, backed by real git repositories.

The emulator knows CodeCommit repositories by name only: it has no content APIs. Here every
repository created through ``CreateRepository`` is also a bare git repository on disk
(``<state dir>/codecommit/<name>.git``, its ``cloneUrlHttp``/``cloneUrlSsh`` answered as that
path), so a real ``git push`` reaches it; and the content APIs the control plane uses are answered
from it with git itself:

- ``GetBranch``, ``GetCommit``, ``GetDifferences`` (paginated), ``GetFile`` and ``GetBlob``, in
  CodeCommit's shapes and with its error names;
- a push runs the repository's ``post-receive`` hook, which sends CodeCommit's
  ``CodeCommit Repository State Change`` event (``referenceCreated``/``referenceUpdated``/
  ``referenceDeleted`` of a branch) to EventBridge, where the template's rule picks it up.

Not emulated: pull requests, approval rules, triggers, merges, and any write API but a push.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from moto.codecommit import models, responses
from moto.core.exceptions import JsonRESTError

_originals: dict[str, Any] = {}
_state: dict[str, Any] = {}
_ZERO = "0" * 40
_MODES = {"100644": "NORMAL", "100755": "EXECUTABLE", "120000": "SYMLINK"}


class _Error(JsonRESTError):
    code = 400

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)


def repository_path(name: str) -> Path:
    return Path(_state["root"]) / f"{name}.git"


def _git(name: str, *args: str, text: bool = True) -> Any:
    result = subprocess.run(
        ["git", "--git-dir", str(repository_path(name)), *args], capture_output=True, text=text, check=False
    )
    if result.returncode != 0:
        stderr = result.stderr if text else result.stderr.decode(errors="replace")
        raise _Error("CommitDoesNotExistException", stderr.strip() or "git failed")
    return result.stdout


def _repository(response: Any) -> str:
    name = response._get_param("repositoryName")
    response.codecommit_backend.get_repository(name)  # RepositoryDoesNotExistException, as CodeCommit says
    return str(name)


def _commit(name: str, specifier: str) -> str:
    """A commit id from a commit id, branch or tag, or CommitDoesNotExistException."""
    try:
        return str(_git(name, "rev-parse", "--verify", "--quiet", f"{specifier}^{{commit}}").strip())
    except _Error:
        raise _Error("CommitDoesNotExistException", f"Could not find commit {specifier}") from None


# -- the repository on disk -------------------------------------------------------------------------

_HOOK = """#!/bin/sh
# layershift's local CodeCommit: every pushed branch becomes a CodeCommit Repository State Change event.
exec {python} -m layershift.local.codecommit_events {endpoint} {region} {account} {repository}
"""


def _create_repository(self: Any, repository_name: str, repository_description: str) -> dict[str, str]:
    metadata = _originals["create_repository"](self, repository_name, repository_description)
    path = repository_path(repository_name)
    shutil.rmtree(path, ignore_errors=True)  # a new repository is empty, whatever an earlier run left on disk
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)], check=True)
    hook = path / "hooks" / "post-receive"
    hook.write_text(
        _HOOK.format(
            python=shlex.quote(sys.executable),
            endpoint=shlex.quote(_state["endpoint"]),
            region=shlex.quote(self.region_name),
            account=shlex.quote(self.account_id),
            repository=shlex.quote(repository_name),
        )
    )
    hook.chmod(0o755)
    metadata["cloneUrlHttp"] = metadata["cloneUrlSsh"] = str(path)
    return metadata


def _get_repository(self: Any, repository_name: str) -> dict[str, str]:
    metadata = _originals["get_repository"](self, repository_name)
    metadata["cloneUrlHttp"] = metadata["cloneUrlSsh"] = str(repository_path(repository_name))
    return metadata


# -- the content APIs ---------------------------------------------------------------------------------


def get_branch(self: Any) -> str:
    name = _repository(self)
    branch = self._get_param("branchName")
    try:
        commit = _git(name, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").strip()
    except _Error:
        raise _Error("BranchDoesNotExistException", f"Branch {branch} does not exist") from None
    return json.dumps({"branch": {"branchName": branch, "commitId": commit}})


def _person(line: str) -> dict[str, str]:
    # "Name <email> 1700000000 +0000"
    who, _, rest = line.partition(" <")
    email, _, when = rest.partition("> ")
    return {"name": who, "email": email, "date": when}


def get_commit(self: Any) -> str:
    name = _repository(self)
    commit = _commit(name, self._get_param("commitId"))
    raw = _git(name, "cat-file", "commit", commit)
    header, _, message = raw.partition("\n\n")
    fields: dict[str, Any] = {"parents": []}
    for line in header.splitlines():
        key, _, value = line.partition(" ")
        if key == "parent":
            fields["parents"].append(value)
        elif key in ("tree", "author", "committer"):
            fields[key] = value
    return json.dumps(
        {
            "commit": {
                "commitId": commit,
                "treeId": fields["tree"],
                "parents": fields["parents"],
                "message": message,
                "author": _person(fields["author"]),
                "committer": _person(fields["committer"]),
            }
        }
    )


def _blob(path: str, mode: str, blob_id: str) -> dict[str, str] | None:
    if set(blob_id) == {"0"}:
        return None
    return {"blobId": blob_id, "path": path, "mode": mode}


def get_differences(self: Any) -> str:
    name = _repository(self)
    after = _commit(name, self._get_param("afterCommitSpecifier"))
    before_spec = self._get_param("beforeCommitSpecifier")
    before = _commit(name, before_spec) if before_spec else None
    args = ["diff-tree", "-r", "--no-renames", "--no-commit-id"]
    args += [before, after] if before else ["--root", after]
    differences = []
    for line in _git(name, *args).splitlines():
        meta, _, path = line.partition("\t")
        old_mode, new_mode, old_blob, new_blob, change = meta.lstrip(":").split()
        differences.append(
            {
                key: value
                for key, value in (
                    ("beforeBlob", _blob(path, old_mode, old_blob)),
                    ("afterBlob", _blob(path, new_mode, new_blob)),
                    ("changeType", change[0]),
                )
                if value is not None
            }
        )
    start = int(self._get_param("NextToken") or 0)
    size = int(self._get_param("MaxResults") or 100)
    page: dict[str, Any] = {"differences": differences[start : start + size]}
    if start + size < len(differences):
        page["NextToken"] = str(start + size)
    return json.dumps(page)


def get_file(self: Any) -> str:
    name = _repository(self)
    commit = _commit(name, self._get_param("commitSpecifier") or "HEAD")
    path = self._get_param("filePath").lstrip("/")
    try:
        mode, _, blob = _git(name, "ls-tree", commit, "--", path).split("\t")[0].split()
    except ValueError:
        raise _Error("FileDoesNotExistException", f"{path} does not exist in {commit}") from None
    content: bytes = _git(name, "cat-file", "blob", blob, text=False)
    return json.dumps(
        {
            "commitId": commit,
            "blobId": blob,
            "filePath": path,
            "fileMode": _MODES.get(mode, "NORMAL"),
            "fileSize": len(content),
            "fileContent": base64.b64encode(content).decode(),
        }
    )


def get_blob(self: Any) -> str:
    name = _repository(self)
    blob = self._get_param("blobId")
    try:
        content: bytes = _git(name, "cat-file", "blob", blob, text=False)
    except _Error:
        raise _Error("BlobIdDoesNotExistException", f"Blob {blob} does not exist") from None
    return json.dumps({"content": base64.b64encode(content).decode()})


_RESPONSES = {
    "get_branch": get_branch,
    "get_commit": get_commit,
    "get_differences": get_differences,
    "get_file": get_file,
    "get_blob": get_blob,
}


def install(aws: Any) -> None:
    if _originals:
        return
    root = Path(aws.state_dir) / "codecommit"
    root.mkdir(parents=True, exist_ok=True)
    _state.update(root=str(root), endpoint=aws.endpoint_url)
    _originals["create_repository"] = models.CodeCommitBackend.create_repository
    _originals["get_repository"] = models.CodeCommitBackend.get_repository
    models.CodeCommitBackend.create_repository = _create_repository  # type: ignore[method-assign]
    models.CodeCommitBackend.get_repository = _get_repository  # type: ignore[method-assign]
    for method, answer in _RESPONSES.items():
        setattr(responses.CodeCommitResponse, method, answer)
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")


def uninstall() -> None:
    if "create_repository" in _originals:
        models.CodeCommitBackend.create_repository = _originals.pop("create_repository")  # type: ignore[method-assign]
        models.CodeCommitBackend.get_repository = _originals.pop("get_repository")  # type: ignore[method-assign]
    for method in _RESPONSES:
        if method in vars(responses.CodeCommitResponse):
            delattr(responses.CodeCommitResponse, method)
    _state.clear()
