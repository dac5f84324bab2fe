"""The integration tier: the real template, ASL file and handlers on the local emulated AWS.

One local AWS and one deployed control plane serve the whole session; each test works on its own
layer and functions, so tests cannot see each other's state.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from layershift.controlplane import ControlPlane, from_outputs

from .support import ROOT


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    from layershift.local.deploy import deploy_control_plane
    from layershift.local.server import LocalAws

    state_dir = tmp_path_factory.mktemp("local-aws")
    with LocalAws(ROOT, state_dir=state_dir) as aws:
        stack = deploy_control_plane(aws, ROOT)
        yield from_outputs(stack.outputs, aws.region, aws.endpoint_url)
