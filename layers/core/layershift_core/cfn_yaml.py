"""CloudFormation and SAM templates in YAML, short-form intrinsics (!Ref, !GetAtt ...) included."""

from __future__ import annotations

from typing import Any

import yaml


class CloudFormationLoader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) that turns short-form tags into their long form."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    key = tag_suffix if tag_suffix in ("Ref", "Condition") else f"Fn::{tag_suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {key: value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def load_cloudformation_yaml(text: Any) -> Any:
    """Parse YAML text or a stream; raises yaml.YAMLError when it is not valid YAML."""
    return yaml.load(text, Loader=CloudFormationLoader)
