"""The lock file: what this control plane has promoted, as one JSON document for version control.

``export`` reads it from the sources of truth: the promoted SSM parameters (``/layershift/<layer>/arn``
and ``/layershift/<layer>/<runtime>/<architecture>/arn``) name the promoted layer versions; the registry
holds each one's build keys and sha256; its build manifest (and, for a manifest written before the
manifest kept hashes, the SBOM beside it) its packages with the sha256 of each wheel installed; one
inventory scan counts who uses it. Any disagreement between them stops the export: a lock file with
holes in it is worse than none.

``check`` reads consumer templates (SAM or CloudFormation, YAML or JSON) and names every pin of one of
the lock's layers at a version other than the promoted one: such a template reverts the layer at its
next deploy. It needs the lock document only, so CI runs it without AWS credentials.

The document is written with sorted keys and sorted lists, so two exports of the same state differ
only in ``generated_at`` and the usage counts that changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, ValidationError

from .artifacts import read_json
from .aws import client
from .builder.manifest import Manifest
from .errors import LockExportFailed, LockFileInvalid, TemplateUnreadable
from .inventory import Inventory, scan
from .models import platform_label
from .pins import Pin, find_pins, resolve_hint
from .planner import published_layer_arn
from .registry import Registry
from .settings import Settings
from .traffic import PARAMETER_NAME, VARIANT_PARAMETER_NAME

FORMAT: Final = 1
DEFAULT_FILE = "layershift.lock.json"


class LockedPackage(BaseModel):
    """One distribution in the layer: its version, and the sha256 of each wheel file it was installed from
    (``sha256:<hex>``, as pip's ``--hash`` takes them; one per Python minor when the wheels differ)."""

    name: str
    version: str
    hashes: list[str] = Field(default_factory=list)


class UsedBy(BaseModel):
    """Who uses the layer version, from one inventory scan: the functions whose ``$LATEST`` runs it or
    one of whose aliases sends traffic to a version that runs it."""

    functions: int = Field(ge=0)
    latest: int = Field(ge=0, description="functions whose $LATEST runs it")
    aliases: int = Field(ge=0, description="aliases (function and name) that send it traffic")


class LockedVariant(BaseModel):
    """One promoted layer version: the variant of the layer that serves some runtimes and architectures."""

    variant: str = Field(description="the build's variant id, e.g. python3.13-any")
    arn: str
    version: int
    build_key: str
    build_keys: list[str] = Field(description="the build key of every target it serves")
    sha256: str = Field(description="hex sha256 of the layer zip (Lambda's CodeSha256 is its base64)")
    compatible_runtimes: list[str]
    compatible_architectures: list[str]
    promoted_for: list[str] = Field(
        default_factory=list, description="runtime/architecture whose promoted parameter names this version"
    )
    parameters: list[str] = Field(description="the SSM parameters that hold this ARN")
    packages: list[LockedPackage]
    used_by: UsedBy | None = None


class LockedLayer(BaseModel):
    """One layer of the control plane, with each promoted variant."""

    layer_name: str = Field(description="the Lambda layer's name (the stack's prefix and the layer)")
    layer_arn: str = Field(description="the unversioned layer ARN")
    parameter: str = Field(description="the SSM parameter consumer templates resolve")
    promoted_arn: str = Field(description="the value of that parameter")
    variants: list[LockedVariant] = Field(min_length=1)

    @property
    def promoted_arns(self) -> set[str]:
        return {variant.arn for variant in self.variants}


class LockFile(BaseModel):
    format: Literal[1] = FORMAT
    generated_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    layers: dict[str, LockedLayer] = Field(default_factory=dict)

    def layer_named(self, layer_name: str) -> tuple[str, LockedLayer] | None:
        """The layer whose Lambda layer name is ``layer_name``."""
        return next(((name, layer) for name, layer in self.layers.items() if layer.layer_name == layer_name), None)


# -- reading and writing --------------------------------------------------------------------------


def dumps(lock: LockFile) -> str:
    """The lock as JSON with sorted keys, one value a line, so it diffs well."""
    return json.dumps(lock.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def loads(text: str, source: str = DEFAULT_FILE) -> LockFile:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LockFileInvalid(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, dict) or "format" not in data:
        raise LockFileInvalid(f"{source}: not a layershift lock file (no 'format' field)")
    found = data["format"]
    if not isinstance(found, int) or isinstance(found, bool):
        raise LockFileInvalid(f"{source}: 'format' is {found!r}, not a number")
    if found > FORMAT:
        raise LockFileInvalid(
            f"{source}: lock file format {found} is newer than this layershift reads ({FORMAT}): upgrade layershift"
        )
    try:
        return LockFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise LockFileInvalid(f"{source}: not a valid lock file: {where}: {first['msg']}{more}") from None


def load(path: Path) -> LockFile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockFileInvalid(f"{path}: no such lock file (write one with `layershift lock export`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockFileInvalid(f"{path}: cannot read the lock file ({exc})") from None
    return loads(text, str(path))


# -- export -----------------------------------------------------------------------------------------


def promoted_parameters(layer: str) -> dict[str, str]:
    """The layer's promoted parameters, name -> ARN: its default and each runtime and architecture's."""
    ssm = client("ssm")
    found: dict[str, str] = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=f"/layershift/{layer}", Recursive=True):
        for parameter in page["Parameters"]:
            name = str(parameter["Name"])
            if name == PARAMETER_NAME.format(layer=layer) or _platform_of(layer, name) is not None:
                found[name] = str(parameter["Value"])
    return dict(sorted(found.items()))


def _platform_of(layer: str, name: str) -> str | None:
    """``python3.13/x86_64`` for ``/layershift/<layer>/python3.13/x86_64/arn``, else None."""
    parts = name.split("/")
    if len(parts) != 6 or parts[:3] != ["", "layershift", layer] or parts[5] != "arn":
        return None
    if VARIANT_PARAMETER_NAME.format(layer=layer, runtime=parts[3], arch=parts[4]) != name:
        return None
    return platform_label(parts[3], parts[4])


def count_users(inventory: Inventory, arn: str) -> UsedBy:
    """What the inventory says of one layer version: the same uses as ``Inventory.users``, counted."""
    functions = latest = aliases = 0
    for function in inventory.functions:
        on_latest = function.latest is not None and arn in function.latest.layers
        routed = [
            alias
            for alias in function.aliases
            if any(arn in (version.layers if (version := function.version(q)) else []) for q in alias.versions)
        ]
        functions += on_latest or bool(routed)
        latest += on_latest
        aliases += len(routed)
    return UsedBy(functions=functions, latest=latest, aliases=aliases)


def _packages(bucket: str, manifest_key: str, arn: str) -> tuple[Manifest, list[LockedPackage]]:
    """The manifest, and its packages with their wheel hashes (from the SBOM beside a manifest that
    predates them)."""
    try:
        manifest = Manifest.model_validate(read_json(bucket, manifest_key))
    except (ClientError, ValueError) as exc:
        raise LockExportFailed(
            f"{arn}: its build manifest s3://{bucket}/{manifest_key} is unreadable ({exc})"
        ) from None
    from_sbom: dict[tuple[str, str], list[str]] = {}
    if manifest.sbom and any(not package.hashes for package in manifest.packages):
        sbom_key = manifest_key.rsplit("/", 1)[0] + "/" + manifest.sbom
        try:
            components = read_json(bucket, sbom_key).get("components", [])
        except (ClientError, ValueError):  # no SBOM to fall back on: those packages are locked without hashes
            components = []
        for component in components:
            digests = [f"sha256:{h['content']}" for h in component.get("hashes", []) if h.get("alg") == "SHA-256"]
            from_sbom[(str(component.get("name")), str(component.get("version")))] = digests
    packages = [
        LockedPackage(
            name=package.name,
            version=package.version,
            hashes=sorted(package.hashes or from_sbom.get((package.name, package.version), [])),
        )
        for package in manifest.packages
    ]
    return manifest, sorted(packages, key=lambda p: (p.name, p.version))


def _variant(
    settings: Settings,
    layer: str,
    arn: str,
    parameters: list[str],
    records: dict[str, dict[str, Any]],
    inventory: Inventory | None,
) -> LockedVariant:
    record = records.get(arn)
    if record is None:
        raise LockExportFailed(
            f"{', '.join(parameters)} names {arn}, but the registry has no record of that version of layer {layer!r}"
        )
    if not record.get("manifest_key"):
        raise LockExportFailed(f"{arn}: its registry record names no build manifest")
    manifest, packages = _packages(settings.bucket, str(record["manifest_key"]), arn)
    build_keys = sorted(str(key) for key in (record.get("build_keys") or [record["build_key"]]))
    return LockedVariant(
        variant=str(record.get("variant") or manifest.variant_id or ""),
        arn=arn,
        version=int(record["version"]),
        build_key=str(record["build_key"]),
        build_keys=build_keys,
        sha256=str(record["sha256"]),
        compatible_runtimes=list(manifest.compatible_runtimes),
        compatible_architectures=list(manifest.compatible_architectures),
        promoted_for=sorted(p for name in parameters if (p := _platform_of(layer, name)) is not None),
        parameters=sorted(parameters),
        packages=packages,
        used_by=count_users(inventory, arn) if inventory is not None else None,
    )


def export_layer(
    settings: Settings, layer: str, inventory: Inventory | None = None, registry: Registry | None = None
) -> LockedLayer | None:
    """One layer's entry, or None when it has no promoted version."""
    parameters = promoted_parameters(layer)
    default = PARAMETER_NAME.format(layer=layer)
    if default not in parameters:
        return None
    published = settings.published_name(layer)
    by_arn: dict[str, list[str]] = {}
    for name, arn in parameters.items():
        parts = arn.split(":")
        if len(parts) != 8 or parts[5] != "layer" or parts[6] != published or not parts[7].isdigit():
            raise LockExportFailed(
                f"{name} holds {arn!r}, which is no version of this control plane's layer {published}"
            )
        by_arn.setdefault(arn, []).append(name)
    records = {str(item["arn"]): item for item in (registry or Registry(settings.table)).versions(layer)}
    variants = [_variant(settings, layer, arn, names, records, inventory) for arn, names in by_arn.items()]
    promoted = parameters[default]
    return LockedLayer(
        layer_name=published,
        layer_arn=promoted.rsplit(":", 1)[0],
        parameter=default,
        promoted_arn=promoted,
        variants=sorted(variants, key=lambda v: (v.promoted_for, v.variant, v.version)),
    )


def export(settings: Settings, layers: Iterable[str] | None = None, *, usage: bool = True) -> LockFile:
    """The lock of ``layers`` (default: every layer in the registry that has a promoted version).

    A layer named in ``layers`` that has no promoted version is an error; ``usage`` False leaves the
    usage counts out (and the inventory scan with them)."""
    registry = Registry(settings.table)
    named = sorted(set(layers)) if layers is not None else None
    wanted = named if named is not None else registry.layers()
    inventory = scan([published_layer_arn(settings, layer) for layer in wanted]) if usage else None
    lock = LockFile()
    for layer in wanted:
        entry = export_layer(settings, layer, inventory, registry)
        if entry is not None:
            lock.layers[layer] = entry
        elif named is not None:
            raise LockExportFailed(
                f"layer {layer!r} has no promoted version (no SSM parameter {PARAMETER_NAME.format(layer=layer)})"
            )
    return lock


# -- check ------------------------------------------------------------------------------------------


class Finding(BaseModel):
    """A template that pins one of the lock's layers at a version other than the promoted one."""

    source: str
    line: int
    pinned: str = Field(description="the ARN as the template writes it")
    layer: str
    promoted_arn: str
    hint: str = Field(description="what to write instead")
    other_variants: dict[str, str] = Field(
        default_factory=dict, description="runtime/architecture -> its parameter, when the layer has several variants"
    )

    def message(self) -> str:
        line = f"{self.source}:{self.line}: pins {self.pinned}; promoted is {self.promoted_arn}; use {self.hint}"
        if self.other_variants:
            line += " (or per runtime: " + ", ".join(
                f"{{{{resolve:ssm:{name}}}}} for {label}" for label, name in self.other_variants.items()
            )
            line += ")"
        return line


def _finding(pin: Pin, lock: LockFile) -> Finding | None:
    found = lock.layer_named(pin.layer_name)
    if found is None:
        return None  # another layer than this control plane's
    layer, locked = found
    if not pin.same_layer(locked.promoted_arn):
        return None  # the same name in another account or region
    if any(pin.matches(arn) for arn in locked.promoted_arns):
        return None
    others = {
        label: VARIANT_PARAMETER_NAME.format(layer=layer, runtime=label.split("/")[0], arch=label.split("/")[1])
        for variant in locked.variants
        for label in variant.promoted_for
    }
    return Finding(
        source=pin.source,
        line=pin.line,
        pinned=pin.text,
        layer=layer,
        promoted_arn=locked.promoted_arn,
        hint=resolve_hint(layer),
        other_variants=dict(sorted(others.items())) if len(locked.variants) > 1 else {},
    )


def check_text(text: str, source: str, lock: LockFile) -> list[Finding]:
    """Every pin in one template's text of a lock's layer at a version the lock does not hold as promoted."""
    return [finding for pin in find_pins(text, source) if (finding := _finding(pin, lock)) is not None]


def read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateUnreadable(f"{path}: no such template") from None
    except IsADirectoryError:
        raise TemplateUnreadable(f"{path}: is a folder, not a template") from None
    except UnicodeDecodeError as exc:
        raise TemplateUnreadable(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise TemplateUnreadable(f"{path}: cannot read it ({exc.strerror or exc})") from None


def check(template_paths: Iterable[Path], lock: LockFile) -> list[Finding]:
    """The findings of every template, in the order given; each template is read before any is checked,
    so an unreadable one fails the check whatever the others hold."""
    texts = [(str(path), read_template(path)) for path in template_paths]
    return [finding for source, text in texts for finding in check_text(text, source, lock)]
