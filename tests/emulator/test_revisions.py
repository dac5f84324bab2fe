"""The local emulation enforces RevisionId as Lambda does."""

import io
import zipfile
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from layershift.local import revisions


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(e, c):\n    return 1\n")
    return buffer.getvalue()


@pytest.fixture
def lam() -> Iterator[object]:
    revisions.install()
    try:
        with mock_aws():
            client = boto3.client("lambda")
            role = boto3.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            client.create_function(
                FunctionName="f",
                Runtime="python3.13",
                Role=role,
                Handler="app.handler",
                Code={"ZipFile": _zip()},
            )
            yield client
    finally:
        revisions.uninstall()


def test_function_revision_changes_on_update_and_stale_ones_are_refused(lam) -> None:  # type: ignore[no-untyped-def]
    first = lam.get_function_configuration(FunctionName="f")["RevisionId"]
    updated = lam.update_function_configuration(FunctionName="f", Description="one", RevisionId=first)
    assert updated["RevisionId"] != first
    with pytest.raises(ClientError) as caught:
        lam.update_function_configuration(FunctionName="f", Description="two", RevisionId=first)
    assert caught.value.response["Error"]["Code"] == "PreconditionFailedException"
    with pytest.raises(ClientError):
        lam.publish_version(FunctionName="f", RevisionId=first)
    assert lam.publish_version(FunctionName="f", RevisionId=updated["RevisionId"])["Version"] == "1"


def test_alias_revision_guards_update_alias(lam) -> None:  # type: ignore[no-untyped-def]
    lam.publish_version(FunctionName="f")
    alias = lam.create_alias(FunctionName="f", Name="live", FunctionVersion="1")
    moved = lam.update_alias(FunctionName="f", Name="live", Description="x", RevisionId=alias["RevisionId"])
    assert moved["RevisionId"] != alias["RevisionId"]
    with pytest.raises(ClientError) as caught:
        lam.update_alias(FunctionName="f", Name="live", Description="y", RevisionId=alias["RevisionId"])
    assert caught.value.response["Error"]["Code"] == "PreconditionFailedException"
