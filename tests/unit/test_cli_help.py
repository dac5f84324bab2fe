"""`layershift --help` and each subcommand's `--help` print and exit 0 (argparse formats help texts
with `%`, so a bare `%` in one of them crashes the help of every command that lists it)."""

import argparse

import pytest

from layershift.cli import build_parser, main


def _subcommands() -> list[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "the CLI has subcommands"
    return sorted(name for action in actions for name in action.choices)


def test_every_subcommand_is_found() -> None:
    assert {"push", "status", "approve", "reject", "abort", "unlock", "build"} <= set(_subcommands())


@pytest.mark.parametrize("argv", [[], *([name] for name in _subcommands())], ids=lambda argv: " ".join(argv) or "top")
def test_help_prints_and_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: layershift")
    if not argv:
        assert "go on to 100%" in out
