"""The command classes of the CLI: click's own, with what its help leaves out.

Click prints no help for arguments, lists every option under one heading and rewraps an epilog. Here an
argument has a help line (an "Arguments" section), an option may name its section (train's options are
grouped as its config is), examples in an epilog print verbatim, and whole numbers read N. All of it
through click's documented extension points: `cls=`, `Command.format_options`, `format_epilog`.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import click

PATH = click.Path(path_type=Path)  # a path, checked by the command that reads or writes it (one error line)


class Argument(click.Argument):
    """A positional argument with a help line."""

    def __init__(self, *args: Any, help: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = help

    def shown(self) -> str:
        """SOURCE, SOURCES... or [SOURCES]...: how the usage line and the Arguments section name it."""
        name = self.metavar or self.name.upper()
        return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 and not name.endswith("...")
                                                          else "")


class Option(click.Option):
    """An option that may name the --help section it is listed under (None: "Options")."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


class Command(click.Command):
    """A command whose --help shows its arguments, its options by section, and its examples as written."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["[OPTIONS]"] + [p.shown() for p in self.get_params(ctx) if isinstance(p, Argument)]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Usage, description, arguments, options by section, examples (the same on every click >= 8.2)."""
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_arguments(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments = [(p.shown(), p.help) for p in self.get_params(ctx) if isinstance(p, Argument) and p.help]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None and not isinstance(p, click.Argument):
                sections.setdefault(getattr(p, "section", None) or "Options", []).append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The epilog: indented blocks (examples) and headings ("Examples:") as written, so that a command stays
        copyable at any width; prose rewrapped to the width."""
        for block in textwrap.dedent(self.epilog or "").strip("\n").split("\n\n"):
            formatter.write_paragraph()
            if block.startswith(" ") or block.endswith(":"):
                formatter.write(block + "\n")
            else:
                formatter.write_text(block)


class Group(click.Group):
    """A group of subcommands (`alphaspec cache ...`): its commands are this module's Command, its examples
    printed as written."""

    command_class = Command
    format_epilog = Command.format_epilog

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its whole first paragraph, wrapped (click cuts it to one line)."""
        rows = [(name, " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split()))
                for name in self.list_commands(ctx) if not (command := self.get_command(ctx, name)).hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def metavar(kind: Any) -> str | None:
    """This CLI's name for a value of click type `kind`: N for whole numbers, FLOAT, PATH, [a|b]; None where
    click's own (TEXT) reads well."""
    if isinstance(kind, click.Choice):
        return "[" + "|".join(map(str, kind.choices)) + "]"
    if kind is int or isinstance(kind, click.IntRange):
        return "N"
    if kind is float or isinstance(kind, click.FloatRange):
        return "FLOAT"
    if isinstance(kind, click.Path):
        return "PATH"
    return None


def option(*decls: str, help: str, type: Any = None, metavar_: str | None = None, **kwargs: Any):
    """click.option with this CLI's classes and metavars (`metavar_` overrides)."""
    return click.option(*decls, cls=Option, type=type, help=help, metavar=metavar_ or metavar(type), **kwargs)


def argument(name: str, help: str, **kwargs: Any):
    """click.argument with a help line."""
    return click.argument(name, cls=Argument, help=help, **kwargs)


def with_options(options: list):
    """Apply click decorators given in --help order (a command's options declared once, as a list)."""
    def apply(function):
        for decorate in reversed(options):
            function = decorate(function)
        return function
    return apply
