"""Layer version ARNs pinned in infrastructure-as-code: a consumer stack's template that names
``arn:...:layer:<name>:<version>`` reverts the layer at its next deploy, whatever layershift promoted.

Templates are read as text, line by line, so every form is caught: a literal ARN, one inside
``!Sub`` with ``${AWS::Region}`` or ``${AWS::AccountId}`` in place of the region or account, in YAML
or JSON, SAM or plain CloudFormation. ``{{resolve:ssm:/layershift/<layer>/arn}}`` pins nothing.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

# arn:<partition>:lambda:<region>:<account>:layer:<name>:<version>; region and account may be ${...}.
_PIN = re.compile(
    r"arn:(?P<partition>\$\{AWS::Partition\}|aws[a-z-]*):lambda:(?P<region>\$\{[^}]+\}|[a-z0-9-]+):"
    r"(?P<account>\$\{[^}]+\}|\d{12}):layer:(?P<name>[A-Za-z0-9_-]+):(?P<version>\d+)"
)


class Pin(BaseModel):
    """One pinned layer version: where, and which."""

    source: str
    line: int
    text: str  # as written, ${...} kept
    layer_name: str  # the Lambda layer's name (with the control plane's prefix)
    version: int
    region: str
    account: str

    def matches(self, arn: str) -> bool:
        """Whether this pin names ``arn``'s layer version (a ``${...}`` region or account matches any)."""
        parts = arn.split(":")
        if len(parts) != 8:
            return False
        region_ok = self.region.startswith("${") or self.region == parts[3]
        account_ok = self.account.startswith("${") or self.account == parts[4]
        return region_ok and account_ok and parts[6] == self.layer_name and parts[7] == str(self.version)

    def same_layer(self, arn: str) -> bool:
        parts = arn.split(":")
        if len(parts) != 8 or parts[6] != self.layer_name:
            return False
        return (self.region.startswith("${") or self.region == parts[3]) and (
            self.account.startswith("${") or self.account == parts[4]
        )


def find_pins(text: str, source: str = "template") -> list[Pin]:
    """Every layer version ARN the template text names, with its line."""
    found: list[Pin] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _PIN.finditer(line):
            found.append(
                Pin(
                    source=source,
                    line=number,
                    text=match[0],
                    layer_name=match["name"],
                    version=int(match["version"]),
                    region=match["region"],
                    account=match["account"],
                )
            )
    return found


def resolve_hint(layer: str) -> str:
    return f"{{{{resolve:ssm:/layershift/{layer}/arn}}}}"
