"""docs/cli-reference.md is generated from the typer app (python -m tracesim.cli.reference) and
must match it, so the reference cannot drift from the commands and options."""

from __future__ import annotations

from tests.tracedirs import REPO_ROOT
from tracesim.cli import app
from tracesim.cli.reference import command_tree, render

REFERENCE = REPO_ROOT / "docs" / "cli-reference.md"
REGENERATE = "regenerate it: python -m tracesim.cli.reference > docs/cli-reference.md"


def test_every_command_and_option_is_rendered() -> None:
    text = render(app)
    tree = list(command_tree(app))
    assert {path for path, _ in tree} >= {"tracesim simulate", "tracesim sweep", "tracesim synth train"}
    for path, cmd in tree[1:]:
        assert f"## {path}\n" in text, path
        for param in cmd.params:
            names = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []
            for name in names:
                assert f"`{name}`" in text, f"{path}: option {name} missing from the reference"
            if param.param_type_name == "argument":
                assert f"`{(param.name or '').upper()}`" in text, f"{path}: argument {param.name} missing"


def test_reference_file_is_up_to_date() -> None:
    assert REFERENCE.is_file(), f"{REFERENCE} is missing; {REGENERATE}"
    assert REFERENCE.read_text() == render(app), f"{REFERENCE} differs from the CLI; {REGENERATE}"
