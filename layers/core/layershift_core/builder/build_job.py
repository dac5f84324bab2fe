"""The CodeBuild entry: download the requirements, build the matrix of layer variants, stage them.

Environment:
- ``LAYERSHIFT_REQUIREMENTS_URI``  s3://bucket/key of the requirements file
- ``LAYERSHIFT_TARGETS``           the build matrix: comma-separated runtime/architecture, e.g.
                                   ``python3.12/x86_64,python3.13/arm64``
- ``LAYERSHIFT_STAGING_URI``       s3://bucket/staging/: the job writes under ``<it><CODEBUILD_BUILD_ARN>/``,
                                   the one prefix the build role may write (``${codebuild:buildArn}``)
- ``CODEBUILD_BUILD_ARN``          set by CodeBuild
- ``LAYERSHIFT_BUILD_KEY``         the matrix key the workflow expects (optional; a mismatch fails)
- ``LAYERSHIFT_ALLOW_RANGES``      true/false (default false)
- ``LAYERSHIFT_PROFILE``           build profile (default "default")
- ``LAYERSHIFT_NO_CACHE``          true/false (default false): do not use the builder's local cache
- ``LAYERSHIFT_AUDIT_FAIL_ON``     none, low, moderate, high or critical: a known vulnerability at or
                                   above it fails the build (default none; severity unknown counts as
                                   at it)
- ``LAYERSHIFT_AUDIT_UNAVAILABLE`` fail or warn (default warn): whether an audit that cannot run fails
- ``LAYERSHIFT_EXPORT_FILE``       where to write the sha256 of variants.json (default
                                   ``variants.sha256`` in the working directory); the buildspec exports
                                   it as ``LAYERSHIFT_VARIANTS_SHA256`` (``env: exported-variables``)

The audit policy is part of every target's build key, so the workflow computes the key with the
same policy it passes here. Without either audit variable the policy is "audit, never
fail", the key a workflow that passes none of them computes.

Output, at the staging prefix: each variant's ``layer.zip``, ``manifest.json`` and ``sbom.cdx.json``
under ``<id>/``, then ``variants.json`` (the VariantIndex, with the sha256 of every file it names).
Nothing in staging is trusted: PublishLayerVersion checks variants.json against the sha256 this job
exported through CodeBuild, every file against variants.json, and copies what matches into
``artifacts/``. There is no cache hit from S3: whether a build is needed is the registry's answer
(FindReusableBuild), so this job always builds (from the builder's local cache when it has the key).

Package code (pip, compileall, the import smoke test) runs without the job's AWS credentials
(:mod:`~layershift_core.builder.sandbox`), and the job makes itself non-dumpable so that its own
``/proc/<pid>/environ`` is closed to them.

On failure the job leaves ``build-failure.json`` (error name and message) at the staging prefix.
boto3 honours ``AWS_ENDPOINT_URL``, so the job runs unchanged against any S3-compatible endpoint.
Run as ``python -m layershift_core.builder.build_job``. Exit code 0 on success, 1 when the build
fails, 2 when the environment is malformed; on failure the last line of output states the error.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from layershift_core.builder import sandbox
from layershift_core.builder.audit import AuditPolicy, FailOn
from layershift_core.builder.build import (
    BUILD_FAILURE_JSON,
    LAYER_ZIP,
    MANIFEST_JSON,
    SBOM_JSON,
    VARIANTS_JSON,
    build_matrix,
)
from layershift_core.builder.key import compute_build_key, compute_matrix_key
from layershift_core.builder.manifest import VariantIndex
from layershift_core.builder.matrix import parse_targets
from layershift_core.builder.zipper import sha256_file
from layershift_core.errors import BuildFailed, LayershiftError
from layershift_core.requirements import parse_requirements

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_CONTENT_TYPES = {
    LAYER_ZIP: "application/zip",
    MANIFEST_JSON: "application/json",
    SBOM_JSON: "application/vnd.cyclonedx+json",
    VARIANTS_JSON: "application/json",
}


EXPORT_FILE = "variants.sha256"


def staging_prefix(staging_uri: str, build_arn: str) -> tuple[str, str]:
    """(bucket, key prefix) of one build's staging folder: ``staging/<build ARN>/``."""
    bucket, base = parse_s3_uri(staging_uri)
    if base and not base.endswith("/"):
        base += "/"
    return bucket, f"{base}{build_arn}/"


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


def job_targets(environ: dict[str, str]) -> list[tuple[str, str]]:
    """The (runtime, architecture) targets of ``LAYERSHIFT_TARGETS``."""
    try:
        return parse_targets(_env("LAYERSHIFT_TARGETS", environ))
    except LayershiftError as exc:
        raise JobConfigError(f"LAYERSHIFT_TARGETS: {exc}") from None


def audit_policy(environ: dict[str, str]) -> AuditPolicy | None:
    """The vulnerability gate the environment asks for; None when it asks for none."""
    fail_on = environ.get("LAYERSHIFT_AUDIT_FAIL_ON", "").strip().lower()
    unavailable = environ.get("LAYERSHIFT_AUDIT_UNAVAILABLE", "").strip().lower()
    if not (fail_on or unavailable):
        return None
    if fail_on and fail_on not in get_args(FailOn):
        raise JobConfigError(f"LAYERSHIFT_AUDIT_FAIL_ON={fail_on!r} must be one of {', '.join(get_args(FailOn))}")
    if unavailable and unavailable not in ("fail", "warn"):
        raise JobConfigError(f"LAYERSHIFT_AUDIT_UNAVAILABLE={unavailable!r} must be fail or warn")
    return AuditPolicy.model_validate({"fail_on": fail_on or "none", "unavailable": unavailable or "warn"})


def run(environ: dict[str, str] | None = None, s3_client=None) -> int:
    """Run one build from the environment. Returns the process exit code."""
    env = dict(os.environ if environ is None else environ)
    try:
        req_bucket, req_key = parse_s3_uri(_env("LAYERSHIFT_REQUIREMENTS_URI", env))
        out_bucket, out_prefix = staging_prefix(_env("LAYERSHIFT_STAGING_URI", env), _env("CODEBUILD_BUILD_ARN", env))
        export_file = Path(env.get("LAYERSHIFT_EXPORT_FILE", "").strip() or EXPORT_FILE)
        targets = job_targets(env)
        allow_ranges = _flag("LAYERSHIFT_ALLOW_RANGES", env)
        profile = env.get("LAYERSHIFT_PROFILE", "").strip() or "default"
        expected_key = env.get("LAYERSHIFT_BUILD_KEY", "").strip()
        no_cache = _flag("LAYERSHIFT_NO_CACHE", env)
        policy = audit_policy(env)
    except JobConfigError as exc:
        print(f"layershift build job: configuration error: {exc}", file=sys.stderr, flush=True)
        return 2
    if s3_client is None:
        import boto3

        s3_client = boto3.client("s3")
    output = Output(s3_client, out_bucket, out_prefix)
    try:
        print(f"layershift build job: reading s3://{req_bucket}/{req_key}", flush=True)
        body = s3_client.get_object(Bucket=req_bucket, Key=req_key)["Body"].read()
        reqs = parse_requirements(body, allow_ranges=allow_ranges, source=req_key.rsplit("/", 1)[-1])
        keys = [compute_build_key(reqs, r, a, profile, policy) for r, a in targets]
        matrix_key = compute_matrix_key(keys)
        if expected_key and expected_key != matrix_key:
            raise BuildFailed(
                f"build key mismatch: the workflow expects {expected_key} but these inputs give {matrix_key} "
                "(the requirements, targets or audit policy changed, or the builder version differs from the "
                "workflow's)"
            )
        with tempfile.TemporaryDirectory(prefix="layershift-job-") as tmp:
            out_dir = Path(tmp)
            index = build_matrix(
                body,
                targets=targets,
                out_dir=out_dir,
                allow_ranges=allow_ranges,
                profile=profile,
                audit_policy=policy,
                use_cache=not no_cache,
            )
            digest = output.upload(out_dir, index)
        export_file.write_text(digest + "\n", encoding="utf-8")
        print(
            f"layershift build job: staged {len(index.variants)} variant(s) and {VARIANTS_JSON} (sha256 {digest}) "
            f"at s3://{out_bucket}/{out_prefix}"
        )
        for variant in index.variants:
            print(f"layershift build job: succeeded, {variant.id} sha256 {variant.sha256}", flush=True)
        return 0
    except LayershiftError as exc:
        message = str(exc)
        print(message, file=sys.stderr, flush=True)
        first = message.splitlines()[0] if message else ""
        print(f"layershift build job failed: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        output.record_failure(exc)
        return 1
    except Exception as exc:
        print(f"layershift build job failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        output.record_failure(exc)
        return 1


class Output:
    """The job's output prefix in S3."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str) -> None:
        self.s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix

    def _put_file(self, path: Path, key: str) -> None:
        self.s3.upload_file(
            str(path), self.bucket, self.prefix + key, ExtraArgs={"ContentType": _CONTENT_TYPES[path.name]}
        )

    def upload(self, out_dir: Path, index: VariantIndex) -> str:
        """Every file variants.json names, then variants.json; returns the sha256 of variants.json."""
        for variant in index.variants:
            for name in sorted(variant.files):
                self._put_file(out_dir / name, name)
        self._put_file(out_dir / VARIANTS_JSON, VARIANTS_JSON)
        return sha256_file(out_dir / VARIANTS_JSON)

    def record_failure(self, exc: Exception) -> None:
        """Leave the reason beside where the zips would have been, so the workflow can say it plainly."""
        body = json.dumps({"error": type(exc).__name__, "message": str(exc)[:8000]}).encode()
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=self.prefix + BUILD_FAILURE_JSON, Body=body, ContentType="application/json"
            )
        except Exception as upload_error:
            print(f"layershift build job: could not record the failure: {upload_error}", file=sys.stderr, flush=True)


def main() -> int:
    """Entry point for ``python -m layershift_core.builder.build_job``."""
    if not sandbox.protect_own_environment():
        print("layershift build job: could not make the job non-dumpable; its environment stays readable", flush=True)
    return run()


if __name__ == "__main__":
    sys.exit(main())
