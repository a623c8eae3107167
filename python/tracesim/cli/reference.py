"""The CLI reference (docs/cli-reference.md), generated from the typer app itself so it cannot
drift from the commands and options:

    python -m tracesim.cli.reference > docs/cli-reference.md

`tests/unit/test_cli_reference.py` fails when the file differs from what this prints."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import typer

HEADER = """# tracesim command-line reference

Generated from the `tracesim` command itself by `python -m tracesim.cli.reference >
docs/cli-reference.md`; do not edit by hand (a test compares it with the commands). The
[user guide](user-guide.md) explains how the commands fit together.

Every command prints one line on stderr and exits non-zero on an error; set `TRACESIM_DEBUG=1`
for a traceback.
"""


# typer ships its own copy of click, so commands and parameters are told apart by what they
# have (a group lists commands, an option has `opts`), not by click's classes.


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "list_commands")


def _is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def command_tree(app: typer.Typer) -> Iterator[tuple[str, Any]]:
    """(full command path, command) for every command of `app`, groups before their commands,
    in the order `tracesim --help` lists them."""
    root = typer.main.get_command(app)

    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, cmd
        if _is_group(cmd):
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    yield from walk(sub, f"{path} {name}")

    yield from walk(root, "tracesim")


def _help(text: str | None) -> str:
    return " ".join((text or "").split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _param_row(param: Any, ctx: Any) -> tuple[str, str, str, str]:
    kind = str(param.display_type(ctx)).strip("<>")
    if _is_option(param):
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        if param.is_flag:
            kind = "flag"
        elif param.multiple:
            kind += ", repeatable"
    else:
        names = f"`{(param.name or '').upper()}`" + (" ..." if param.nargs == -1 else "")
    if param.required:
        default = "required"
    elif param.default is None or param.default == () or param.default == []:
        default = ""
    else:
        default = f"`{param.default}`"
    return names, kind, default, _help(param.help)


def render(app: typer.Typer) -> str:
    """The reference as Markdown."""
    out = [HEADER]
    tree = list(command_tree(app))
    out.append("## Commands\n")
    for path, cmd in tree[1:]:
        anchor = path.replace(" ", "-")
        summary = _help(cmd.get_short_help_str(limit=200))
        out.append(f"- [`{path}`](#{anchor}): {summary}")
    out.append("")
    for path, cmd in tree[1:]:
        out.append(f"## {path}\n")
        ctx = typer.Context(cmd, info_name=path)
        usage = re.sub(r"\{(\w+)\}", lambda m: m[1].upper(), " ".join(cmd.collect_usage_pieces(ctx)))
        out.append(f"```\n{path} {usage}\n```\n")
        if cmd.help:
            out.append(cmd.help.strip() + "\n")
        if _is_group(cmd):
            subs = ", ".join(f"`{path} {n}`" for n in cmd.list_commands(ctx))
            out.append(f"Subcommands: {subs}.\n")
            continue
        params = [p for p in cmd.params if not (_is_option(p) and "--help" in p.opts)]
        if params:
            out.append("| argument or option | type | default | meaning |")
            out.append("|---|---|---|---|")
            for p in params:
                out.append("| " + " | ".join(_cell(c) for c in _param_row(p, ctx)) + " |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    from tracesim.cli import app

    sys.stdout.write(render(app))


if __name__ == "__main__":
    main()
