"""Who uses which layer version, account-wide: the facts that `usage`, `gc` and `lock export` stand on.

One scan of the account's functions, paced under the control plane's Lambda budget like a rollout:

- ``ListFunctions(FunctionVersion=ALL)``, paginated: every function's ``$LATEST`` and every published
  version, each with its layers, code size and description, 50 per request, so a fleet of 1,000
  functions with a few versions each costs about a hundred requests, not one per version;
- ``ListAliases`` for each function with a version that uses one of the scanned layers (this control
  plane's, as the registry knows them: not the control plane's own layer, whose name shares the
  prefix): each alias's version, and the version its weighted routing sends traffic to.

A scan that runs out of time (``deadline``) says so (``complete`` is False) instead of pretending: a
cleanup refuses to delete anything on an incomplete inventory, since a function it did not see may
use what it would delete.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from .aws import client

LATEST = "$LATEST"


def layer_arn_parts(arn: str) -> tuple[str, int] | None:
    """``arn:aws:lambda:r:a:layer:NAME:7`` → (``arn:aws:lambda:r:a:layer:NAME``, 7); None for another ARN."""
    parts = arn.split(":")
    if len(parts) != 8 or parts[5] != "layer" or not parts[7].isdigit():
        return None
    return ":".join(parts[:7]), int(parts[7])


class FunctionVersionUse(BaseModel):
    """One version of a function (``$LATEST`` or a number) and the layer versions it runs."""

    qualifier: str
    layers: list[str] = []
    description: str = ""
    code_size: int = 0
    last_modified: str = ""


class AliasUse(BaseModel):
    """An alias and every version it sends traffic to: its primary version, and those of its routing."""

    name: str
    version: str
    routing: dict[str, float] = {}

    @property
    def versions(self) -> list[str]:
        return [self.version, *self.routing]


class FunctionUse(BaseModel):
    name: str
    arn: str
    runtime: str = ""
    architecture: str = "x86_64"
    versions: list[FunctionVersionUse] = []  # $LATEST first, then the published versions, oldest first
    aliases: list[AliasUse] = []
    aliases_listed: bool = False

    @property
    def latest(self) -> FunctionVersionUse | None:
        return next((v for v in self.versions if v.qualifier == LATEST), None)

    def version(self, qualifier: str) -> FunctionVersionUse | None:
        return next((v for v in self.versions if v.qualifier == qualifier), None)

    @property
    def aliased_versions(self) -> set[str]:
        return {version for alias in self.aliases for version in alias.versions}

    def uses(self) -> list[tuple[str, str]]:
        """(layer version ARN, how): what ``$LATEST`` runs, and what each alias sends traffic to."""
        found: list[tuple[str, str]] = []
        latest = self.latest
        if latest is not None:
            found += [(arn, LATEST) for arn in latest.layers]
        for alias in self.aliases:
            for qualifier in alias.versions:
                version = self.version(qualifier)
                for arn in version.layers if version else []:
                    weight = alias.routing.get(qualifier)
                    how = f"alias {alias.name} -> {qualifier}" + (f" ({weight:.0%})" if weight is not None else "")
                    found.append((arn, how))
        return found


class Inventory(BaseModel):
    """The account's functions that touch this control plane's layers, as one scan saw them."""

    taken_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    layers: list[str] = []  # the unversioned ARNs of the layers scanned for
    complete: bool = True
    functions_seen: int = 0
    functions: list[FunctionUse] = []
    problems: list[str] = []

    def users_by_version(self) -> dict[str, list[tuple[str, str]]]:
        """Layer version ARN -> (function, how) for each use: one pass over the fleet, for callers that
        ask of many versions."""
        found: dict[str, list[tuple[str, str]]] = {}
        for function in self.functions:
            for arn, how in function.uses():
                found.setdefault(arn, []).append((function.name, how))
        return found

    def users(self, layer_version_arn: str) -> list[tuple[str, str]]:
        """(function, how) for every use of one layer version: by a ``$LATEST`` or through an alias."""
        return self.users_by_version().get(layer_version_arn, [])

    def in_use(self) -> set[str]:
        """Every layer version ARN that a ``$LATEST`` runs or an alias sends traffic to."""
        return set(self.users_by_version())

    def function(self, name: str) -> FunctionUse | None:
        return next((f for f in self.functions if f.name == name), None)


def _unversioned(arn: str) -> str:
    parts = layer_arn_parts(arn)
    return parts[0] if parts else arn


def _version_of(config: dict[str, Any]) -> FunctionVersionUse:
    return FunctionVersionUse(
        qualifier=str(config.get("Version") or LATEST),
        layers=[str(layer["Arn"]) for layer in config.get("Layers") or []],
        description=str(config.get("Description") or ""),
        code_size=int(config.get("CodeSize") or 0),
        last_modified=str(config.get("LastModified") or ""),
    )


def list_aliases(lam: Any, name: str) -> list[AliasUse]:
    """Every alias of the function, with the versions its routing sends traffic to (ListAliases, paged)."""
    found: list[AliasUse] = []
    for page in lam.get_paginator("list_aliases").paginate(FunctionName=name):
        for alias in page["Aliases"]:
            routing = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
            found.append(
                AliasUse(
                    name=alias["Name"],
                    version=str(alias["FunctionVersion"]),
                    routing={str(v): float(w) for v, w in routing.items()},
                )
            )
    return found


def _qualifier_order(version: FunctionVersionUse) -> tuple[int, int]:
    return (0, 0) if version.qualifier == LATEST else (1, int(version.qualifier))


def scan(layers: Iterable[str], *, also: set[str] | None = None, deadline: float | None = None) -> Inventory:
    """The functions whose ``$LATEST`` or a published version uses a version of one of ``layers``
    (unversioned layer ARNs), and those named in ``also`` (functions tagged for a layer), each with
    its aliases.

    ``deadline`` (epoch seconds): past it, no more aliases are listed and the inventory is marked
    incomplete."""
    lam = client("lambda")
    wanted = set(also or ())
    scanned = set(layers)
    by_name: dict[str, FunctionUse] = {}
    every: dict[str, FunctionUse] = {}
    for page in lam.get_paginator("list_functions").paginate(FunctionVersion="ALL"):
        for config in page["Functions"]:
            name = str(config["FunctionName"])
            function = every.get(name)
            if function is None:
                function = every[name] = FunctionUse(
                    name=name,
                    arn=str(config["FunctionArn"]).removesuffix(f":{config.get('Version')}"),
                    runtime=str(config.get("Runtime") or config.get("PackageType") or ""),
                    architecture=str((config.get("Architectures") or ["x86_64"])[0]),
                )
            version = _version_of(config)
            function.versions.append(version)
            if name in wanted or any(_unversioned(arn) in scanned for arn in version.layers):
                by_name[name] = function
    inventory = Inventory(layers=sorted(scanned), functions_seen=len(every))
    for name in sorted(by_name):
        function = by_name[name]
        function.versions.sort(key=_qualifier_order)
        if deadline is not None and time.time() > deadline:
            inventory.complete = False
            inventory.problems.append(f"{name}: its aliases were not listed before the deadline")
        else:
            try:
                function.aliases = list_aliases(lam, name)
                function.aliases_listed = True
            except lam.exceptions.ResourceNotFoundException:
                continue  # deleted since ListFunctions listed it
        inventory.functions.append(function)
    return inventory
