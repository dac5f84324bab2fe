"""A CycloneDX 1.5 JSON SBOM of the layer, from the installed distributions' metadata."""

from __future__ import annotations

import importlib.metadata
import json
import uuid
from pathlib import Path
from typing import Any

SBOM_JSON = "sbom.cdx.json"
SPEC_VERSION = "1.5"
_LICENSE_CLASSIFIER = "License :: "
_MAX_LICENSE_NAME = 200


def purl(name: str, version: str) -> str:
    """``pkg:pypi/<name>@<version>`` (name normalised as the purl spec asks for PyPI)."""
    return f"pkg:pypi/{name.lower().replace('_', '-')}@{version}"


def _licenses(metadata: Any) -> list[dict[str, Any]]:
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return [{"expression": expression}]
    names: list[str] = []
    for classifier in metadata.get_all("Classifier") or []:
        if classifier.startswith(_LICENSE_CLASSIFIER):
            name = classifier.split(" :: ")[-1].strip()
            if name and name != "OSI Approved" and name not in names:
                names.append(name)
    declared = (metadata.get("License") or "").strip()
    if not names and declared and "\n" not in declared and len(declared) <= _MAX_LICENSE_NAME:
        names.append(declared)
    return [{"license": {"name": name}} for name in names]


def component(site: Path, dist: Any, wheel: dict[str, str] | None) -> dict[str, Any]:
    """One CycloneDX ``library`` component of an installed distribution."""
    metadata = importlib.metadata.PathDistribution(site / dist.dist_info).metadata
    ref = purl(dist.name, dist.version)
    entry: dict[str, Any] = {
        "type": "library",
        "bom-ref": ref,
        "name": dist.name,
        "version": dist.version,
        "purl": ref,
    }
    description = (metadata.get("Summary") or "").strip()
    if description:
        entry["description"] = description
    licenses = _licenses(metadata)
    if licenses:
        entry["licenses"] = licenses
    if wheel and wheel.get("sha256"):
        entry["hashes"] = [{"alg": "SHA-256", "content": wheel["sha256"]}]
    if wheel and wheel.get("url"):
        entry["externalReferences"] = [{"type": "distribution", "url": wheel["url"]}]
    entry["properties"] = [{"name": "layershift:wheel_tag", "value": tag} for tag in dist.tags]
    return entry


def build_sbom(
    site: Path,
    dists: list[Any],
    wheels: dict[str, dict[str, str]],
    *,
    layer_name: str,
    build_key: str,
    sha256: str,
    builder_version: str,
    timestamp: str,
) -> dict[str, Any]:
    """The SBOM document: the layer zip as the subject, one component per distribution."""
    components = [component(site, dist, wheels.get(dist.name)) for dist in dists]
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'layershift:' + sha256)}",
        "version": 1,
        "metadata": {
            "timestamp": timestamp,
            "tools": {"components": [{"type": "application", "name": "layershift", "version": builder_version}]},
            "component": {
                "type": "file",
                "bom-ref": f"layer:{build_key}",
                "name": layer_name,
                "hashes": [{"alg": "SHA-256", "content": sha256}],
                "properties": [{"name": "layershift:build_key", "value": build_key}],
            },
        },
        "components": components,
        "dependencies": [
            {"ref": f"layer:{build_key}", "dependsOn": [c["bom-ref"] for c in components]},
        ],
    }


def write_sbom(path: Path, document: dict[str, Any]) -> None:
    """Write the SBOM as indented JSON."""
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
