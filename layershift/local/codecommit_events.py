"""The ``post-receive`` hook of a local CodeCommit repository (``codecommit.py``): each branch the
push moved becomes CodeCommit's ``CodeCommit Repository State Change`` event on the local
EventBridge, shaped as CodeCommit sends it.

Run by git as ``python -m layershift.local.codecommit_events ENDPOINT REGION ACCOUNT REPOSITORY``
with ``<old> <new> <ref>`` lines on standard input.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import boto3

_ZERO = "0" * 40


def state_change(region: str, account: str, repository: str, old: str, new: str, ref: str) -> dict[str, Any] | None:
    """The PutEvents entry for one moved reference, or None for a reference that is not a branch."""
    if not ref.startswith("refs/heads/"):
        return None
    detail: dict[str, str] = {
        "repositoryName": repository,
        "repositoryId": repository,
        "referenceType": "branch",
        "referenceName": ref.removeprefix("refs/heads/"),
        "referenceFullName": ref,
        "callerUserArn": f"arn:aws:iam::{account}:user/local-git",
    }
    if new == _ZERO:
        detail.update(event="referenceDeleted", oldCommitId=old)
    elif old == _ZERO:
        detail.update(event="referenceCreated", commitId=new)
    else:
        detail.update(event="referenceUpdated", commitId=new, oldCommitId=old)
    return {
        "Source": "aws.codecommit",
        "DetailType": "CodeCommit Repository State Change",
        "Resources": [f"arn:aws:codecommit:{region}:{account}:{repository}"],
        "Detail": json.dumps(detail),
    }


def main(argv: list[str]) -> int:
    endpoint, region, account, repository = argv
    entries: list[Any] = []
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 3 and (entry := state_change(region, account, repository, *parts)):
            entries.append(entry)
    if entries:
        events = boto3.client(
            "events",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        events.put_events(Entries=entries)
        print(f"layershift local CodeCommit: {len(entries)} state change event(s) sent")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
