"""The CodeBuild entry: download the requirements, build the layer, upload zip and manifest.

Environment:
- ``LAYERSHIFT_REQUIREMENTS_URI``  s3://bucket/key of the requirements file
- ``LAYERSHIFT_RUNTIME``           e.g. python3.13
- ``LAYERSHIFT_ARCH``              x86_64 or arm64
- ``LAYERSHIFT_OUTPUT_URI``        s3://bucket/artifacts/<layer>/<build_key>/
- ``LAYERSHIFT_BUILD_KEY``         the build key the workflow expects (optional; a mismatch fails)
- ``LAYERSHIFT_ALLOW_RANGES``      true/false (default false)
- ``LAYERSHIFT_PROFILE``           build profile (default "default")
- ``LAYERSHIFT_NO_CACHE``          true/false (default false): build even when the output already holds
                                   this build key
- ``LAYERSHIFT_FAIL_ON_VULNERABILITY`` true/false (default false): fail when pip-audit reports a known
                                   vulnerability

When ``layer.zip`` and ``manifest.json`` already exist at the output URI with this build key in
their object metadata (and the same sha256), the build is a no-op: the job reports the cache hit and
exits 0 without running pip.

boto3 honours ``AWS_ENDPOINT_URL``, so the job runs unchanged against any S3-compatible endpoint.
Run as ``python -m layershift_core.builder.build_job``. Exit code 0 on success; on failure the
last line of output states the error.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from layershift_core.builder.build import BUILD_FAILURE_JSON, LAYER_ZIP, MANIFEST_JSON, SBOM_JSON, build_layer
from layershift_core.builder.key import compute_build_key
from layershift_core.errors import BuildFailed, LayershiftError
from layershift_core.requirements import parse_requirements

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class JobConfigError(Exception):
    """The job's environment is incomplete or malformed."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise JobConfigError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


def _env(name: str, environ: dict[str, str]) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise JobConfigError(f"environment variable {name} is not set")
    return value


def _flag(name: str, environ: dict[str, str]) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise JobConfigError(f"environment variable {name}={value!r} must be true or false")


def run(environ: dict[str, str] | None = None, s3_client=None) -> int:
    """Run one build from the environment. Returns the process exit code."""
    env = dict(os.environ if environ is None else environ)
    try:
        req_bucket, req_key = parse_s3_uri(_env("LAYERSHIFT_REQUIREMENTS_URI", env))
        out_bucket, out_prefix = parse_s3_uri(_env("LAYERSHIFT_OUTPUT_URI", env))
        runtime = _env("LAYERSHIFT_RUNTIME", env)
        architecture = _env("LAYERSHIFT_ARCH", env)
        allow_ranges = _flag("LAYERSHIFT_ALLOW_RANGES", env)
        profile = env.get("LAYERSHIFT_PROFILE", "").strip() or "default"
        expected_key = env.get("LAYERSHIFT_BUILD_KEY", "").strip()
        no_cache = _flag("LAYERSHIFT_NO_CACHE", env)
        fail_on_vulnerability = _flag("LAYERSHIFT_FAIL_ON_VULNERABILITY", env)
    except JobConfigError as exc:
        print(f"layershift build job: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    if out_prefix and not out_prefix.endswith("/"):
        out_prefix += "/"

    if s3_client is None:
        import boto3

        s3_client = boto3.client("s3")
    try:
        print(f"layershift build job: reading s3://{req_bucket}/{req_key}", flush=True)
        body = s3_client.get_object(Bucket=req_bucket, Key=req_key)["Body"].read()
        reqs = parse_requirements(body, allow_ranges=allow_ranges, source=req_key.rsplit("/", 1)[-1])
        build_key = compute_build_key(reqs, runtime, architecture, profile)
        if expected_key and expected_key != build_key:
            raise BuildFailed(
                f"build key mismatch: the workflow expects {expected_key} but these inputs give {build_key} "
                "(the requirements changed, or the builder version differs from the workflow's)"
            )
        if not no_cache and _already_built(s3_client, out_bucket, out_prefix, build_key):
            print(
                f"layershift build job: cache hit: s3://{out_bucket}/{out_prefix} already holds {LAYER_ZIP} and "
                f"{MANIFEST_JSON} of build key {build_key}; nothing was built",
                flush=True,
            )
            return 0
        with tempfile.TemporaryDirectory(prefix="layershift-job-") as tmp:
            out_dir = Path(tmp)
            manifest = build_layer(
                body,
                runtime=runtime,
                architecture=architecture,
                out_dir=out_dir,
                allow_ranges=allow_ranges,
                profile=profile,
                use_cache=not no_cache,
                fail_on_vulnerability=fail_on_vulnerability,
            )
            metadata = {"build-key": manifest.build_key, "sha256": manifest.sha256}
            if manifest.sbom and (out_dir / manifest.sbom).is_file():
                s3_client.upload_file(
                    str(out_dir / manifest.sbom),
                    out_bucket,
                    out_prefix + SBOM_JSON,
                    ExtraArgs={"ContentType": "application/vnd.cyclonedx+json", "Metadata": metadata},
                )
            s3_client.upload_file(
                str(out_dir / LAYER_ZIP),
                out_bucket,
                out_prefix + LAYER_ZIP,
                ExtraArgs={"ContentType": "application/zip", "Metadata": metadata},
            )
            s3_client.upload_file(
                str(out_dir / MANIFEST_JSON),
                out_bucket,
                out_prefix + MANIFEST_JSON,
                ExtraArgs={"ContentType": "application/json", "Metadata": metadata},
            )
        print(
            f"layershift build job: uploaded {LAYER_ZIP}, {MANIFEST_JSON} and {SBOM_JSON} to s3://{out_bucket}/{out_prefix}"
        )
        print(f"layershift build job: succeeded, sha256 {manifest.sha256}", flush=True)
        return 0
    except LayershiftError as exc:
        message = str(exc)
        print(message, file=sys.stderr, flush=True)
        first = message.splitlines()[0] if message else ""
        print(f"layershift build job failed: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        _record_failure(s3_client, out_bucket, out_prefix, exc)
        return 1
    except Exception as exc:
        print(f"layershift build job failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        _record_failure(s3_client, out_bucket, out_prefix, exc)
        return 1


def _already_built(s3_client: Any, bucket: str, prefix: str, build_key: str) -> bool:
    """Whether the output already holds the zip and manifest of ``build_key`` (same sha256 on both)."""
    heads = []
    for name in (LAYER_ZIP, MANIFEST_JSON):
        try:
            heads.append(s3_client.head_object(Bucket=bucket, Key=prefix + name))
        except Exception:
            return False
    metadata = [head.get("Metadata", {}) for head in heads]
    return (
        all(m.get("build-key") == build_key for m in metadata)
        and bool(metadata[0].get("sha256"))
        and (metadata[0].get("sha256") == metadata[1].get("sha256"))
    )


def _record_failure(s3_client: Any, bucket: str, prefix: str, exc: Exception) -> None:
    """Leave the reason beside where the zip would have been, so the workflow can say it plainly."""
    body = json.dumps({"error": type(exc).__name__, "message": str(exc)[:8000]}).encode()
    try:
        s3_client.put_object(Bucket=bucket, Key=prefix + BUILD_FAILURE_JSON, Body=body, ContentType="application/json")
    except Exception as upload_error:
        print(f"layershift build job: could not record the failure: {upload_error}", file=sys.stderr, flush=True)


def main() -> int:
    """Entry point for ``python -m layershift_core.builder.build_job``."""
    return run()


if __name__ == "__main__":
    sys.exit(main())
