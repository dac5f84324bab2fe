"""`sam build` of the real template: each function ships only its handler; the shared code comes
from the control plane's layer."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layershift_core.builder.platforms import find_interpreter

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir() if p.is_dir())


def _sam() -> str | None:
    beside = Path(sys.executable).with_name("sam")
    return str(beside) if beside.exists() else shutil.which("sam")


@pytest.mark.network
def test_sam_build_packages_thin_functions_and_the_core_layer(tmp_path: Path) -> None:
    python313 = find_interpreter("3.13")
    sam = _sam()
    if python313 is None or sam is None:
        pytest.skip(f"sam build needs python3.13 and sam on PATH (found python3.13={python313}, sam={sam})")
    env = {**os.environ, "PATH": f"{Path(python313).parent}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    build = tmp_path / "build"
    result = subprocess.run(
        [sam, "build", "--template", str(ROOT / "template.yaml"), "--build-dir", str(build)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built_functions = [p for p in build.iterdir() if p.name.endswith("Function")]
    assert len(built_functions) == len(FUNCTIONS)
    for folder in built_functions:
        assert sorted(p.name for p in folder.iterdir()) == ["app.py"], folder.name
    layer = build / "CoreLayer" / "python"
    assert (layer / "layershift_core" / "builder" / "build_job.py").exists()
    for dependency in ("pydantic", "aws_lambda_powertools", "packaging"):
        assert (layer / dependency).is_dir(), dependency
