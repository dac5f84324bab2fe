"""Helpers for the tests of the local emulated AWS."""

from __future__ import annotations

import io
import json
import textwrap
import time
import zipfile
from collections.abc import Callable
from typing import Any

TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


def zip_bytes(files: dict[str, str]) -> bytes:
    """A zip archive holding ``files`` (name -> text)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, textwrap.dedent(text))
    return buffer.getvalue()


def handler_zip(body: str) -> bytes:
    return zip_bytes({"app.py": body})


VERSION_HANDLER = """
import os

class LayerBroken(Exception):
    pass

def handler(event, context):
    if event.get("raise") == "ValueError":
        raise ValueError("bad input: " + str(event.get("detail")))
    if event.get("raise") == "LayerBroken":
        raise LayerBroken("the new layer broke this function")
    return {"version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"], "tag": TAG, "echo": event}
"""


def versioned_handler(tag: str) -> bytes:
    return handler_zip(VERSION_HANDLER + f"\nTAG = {tag!r}\n")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
