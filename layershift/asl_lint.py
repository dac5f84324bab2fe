"""statelint, less two findings about fields it does not know yet.

statelint 3.1.0, the newest release on PyPI, predates two fields of the Distributed Map that Step
Functions documents and the rollout workflow uses: a Map state's ``Label`` (it names the Map Run and
its child executions in the console) and ``ItemReader.ReaderConfig.InputType`` (``JSON``: the items
are a JSON array in S3). Exactly these findings are dropped, each printed as dropped; every other
finding fails the lint, as with statelint itself.

    python -m layershift.asl_lint statemachines/*.asl.json
"""

from __future__ import annotations

import re
import sys

from statelint.config import Config
from statelint.linter import Linter

KNOWN_GAPS = (
    re.compile(r'^Field "Label" not allowed in State Machine\.States\.[A-Za-z0-9]+$'),
    re.compile(r'^Field "InputType" not allowed in State Machine\.States\.[A-Za-z0-9]+\.ItemReader\.ReaderConfig$'),
)


def lint(paths: list[str]) -> int:
    failed = False
    for path in paths:
        problems = [str(problem) for problem in Linter.validate(path, Config([], False, False))]
        real = [problem for problem in problems if not any(gap.match(problem) for gap in KNOWN_GAPS)]
        dropped = len(problems) - len(real)
        note = f" ({dropped} finding(s) on Label/ReaderConfig.InputType dropped: statelint 3.1.0 predates them)"
        if real:
            failed = True
            print(f"{path}: {len(real)} error(s){note if dropped else ''}")
            for problem in real:
                print(f" {problem}")
        else:
            print(f"{path}: ok{note if dropped else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(lint(sys.argv[1:]))
