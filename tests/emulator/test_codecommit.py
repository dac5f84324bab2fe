"""The local CodeCommit: a repository is a bare git repository, a real `git push` reaches it, the
content APIs answer from it in CodeCommit's shapes, and a push is a state change event on EventBridge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from layershift.local.server import LocalAws

REPOSITORY = "emulated-specs"


def _git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True, check=True).stdout.strip()


def _commit(work: Path, files: dict[str, str | None], message: str) -> str:
    for path, content in files.items():
        target = work / path
        if content is None:
            target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _git(work, "add", "-A")
    _git(work, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", message)
    return _git(work, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def pushed(aws: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two pushes to main: one that adds three files, one that changes one and deletes another; and
    the state change events a probe rule caught."""
    sqs, events, codecommit = aws.client("sqs"), aws.client("events"), aws.client("codecommit")
    queue = sqs.create_queue(QueueName="codecommit-probe")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.codecommit"], "detail-type": ["CodeCommit Repository State Change"]}
    events.put_rule(Name="codecommit-probe", EventPattern=json.dumps(pattern))
    events.put_targets(Rule="codecommit-probe", Targets=[{"Id": "queue", "Arn": queue_arn}])

    clone_url = codecommit.create_repository(repositoryName=REPOSITORY)["repositoryMetadata"]["cloneUrlHttp"]
    work = tmp_path_factory.mktemp("work")
    subprocess.run(["git", "clone", "-q", clone_url, str(work)], check=True, capture_output=True)
    _git(work, "checkout", "-q", "-b", "main")
    first = _commit(
        work, {"layers/a/requirements.txt": "six==1.16.0\n", "layers/a/layer.toml": "", "README": "x"}, "add a"
    )
    _git(work, "push", "-q", "origin", "main")
    second = _commit(work, {"layers/a/requirements.txt": "six==1.17.0\n", "layers/a/layer.toml": None}, "bump a")
    _git(work, "push", "-q", "origin", "main")
    received: list[dict[str, Any]] = []
    for _ in range(10):
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        received += [json.loads(message["Body"]) for message in messages]
        if len(received) >= 2:
            break
    return {"first": first, "second": second, "events": received, "clone_url": clone_url}


def test_a_repository_is_a_bare_git_repository_that_takes_a_push(aws: LocalAws, pushed: dict[str, Any]) -> None:
    assert (Path(pushed["clone_url"]) / "HEAD").exists()
    branch = aws.client("codecommit").get_branch(repositoryName=REPOSITORY, branchName="main")["branch"]
    assert branch == {"branchName": "main", "commitId": pushed["second"]}
    commit = aws.client("codecommit").get_commit(repositoryName=REPOSITORY, commitId=pushed["second"])["commit"]
    assert commit["parents"] == [pushed["first"]] and commit["message"].strip() == "bump a"
    assert commit["author"]["email"] == "dev@example.com"


def test_differences_name_each_changed_file_as_codecommit_does(aws: LocalAws, pushed: dict[str, Any]) -> None:
    codecommit = aws.client("codecommit")
    first = codecommit.get_differences(repositoryName=REPOSITORY, afterCommitSpecifier=pushed["first"])
    assert {d["afterBlob"]["path"]: d["changeType"] for d in first["differences"]} == {
        "README": "A",
        "layers/a/layer.toml": "A",
        "layers/a/requirements.txt": "A",
    }
    assert all("beforeBlob" not in d for d in first["differences"])
    pages = codecommit.get_paginator("get_differences").paginate(
        repositoryName=REPOSITORY,
        beforeCommitSpecifier=pushed["first"],
        afterCommitSpecifier="main",
        PaginationConfig={"PageSize": 1},
    )
    changes = [d for page in pages for d in page["differences"]]
    assert len(changes) == 2  # one per page, through NextToken
    kinds = {(d.get("afterBlob") or d["beforeBlob"])["path"]: d["changeType"] for d in changes}
    assert kinds == {"layers/a/layer.toml": "D", "layers/a/requirements.txt": "M"}


def test_files_and_blobs_are_the_pushed_bytes(aws: LocalAws, pushed: dict[str, Any]) -> None:
    codecommit = aws.client("codecommit")
    old = codecommit.get_file(
        repositoryName=REPOSITORY, commitSpecifier=pushed["first"], filePath="layers/a/requirements.txt"
    )
    assert old["fileContent"] == b"six==1.16.0\n" and old["commitId"] == pushed["first"]
    new = codecommit.get_file(repositoryName=REPOSITORY, commitSpecifier="main", filePath="layers/a/requirements.txt")
    assert new["fileContent"] == b"six==1.17.0\n"
    assert codecommit.get_blob(repositoryName=REPOSITORY, blobId=new["blobId"])["content"] == b"six==1.17.0\n"
    with pytest.raises(codecommit.exceptions.FileDoesNotExistException):
        codecommit.get_file(repositoryName=REPOSITORY, commitSpecifier="main", filePath="layers/a/layer.toml")
    with pytest.raises(codecommit.exceptions.RepositoryDoesNotExistException):
        codecommit.get_file(repositoryName="no-such-repository", filePath="README")


def test_a_push_is_a_state_change_event(aws: LocalAws, pushed: dict[str, Any]) -> None:
    details = [event["detail"] for event in pushed["events"]]
    assert [d["event"] for d in details] == ["referenceCreated", "referenceUpdated"]
    assert details[0]["commitId"] == pushed["first"] and "oldCommitId" not in details[0]
    assert (details[1]["oldCommitId"], details[1]["commitId"]) == (pushed["first"], pushed["second"])
    assert all(d["referenceName"] == "main" and d["repositoryName"] == REPOSITORY for d in details)
    assert pushed["events"][0]["resources"] == [f"arn:aws:codecommit:us-east-1:{aws.account_id}:{REPOSITORY}"]
