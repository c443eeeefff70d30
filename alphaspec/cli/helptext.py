"""`--help` that reads like click's: metavars such as PATH, N, FLOAT and [a|b] instead of Typer's
`<int range>`, `<bool>`, `<list[str]>` and `{source}`.

Typer >= 0.26 prints the Python annotation of each parameter unless it has a metavar. Rather than
spell a metavar on every option, the missing ones are derived here from the click type, once, when
the CLI is imported. Explicit metavars (`typer.Option(metavar="REGEX")`) still win. Older Typers
already print metavars and are left alone.
"""

from __future__ import annotations

from typing import get_args, get_origin

import typer.core

_NAMES = {int: "N", float: "FLOAT", str: "TEXT", bool: "BOOL"}


def type_metavar(desc) -> str:
    """PATH, N, FLOAT, TEXT or [a|b|c] for one parameter, from Typer's description of its annotation."""
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    if get_origin(annotation) in (list, tuple):
        names = [_NAMES.get(a, getattr(a, "__name__", str(a)).upper()) for a in get_args(annotation)]
        return names[0] if get_origin(annotation) is list else " ".join(names)
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


def _option_metavar(self, ctx) -> str | None:
    if self.metavar is not None:
        return self.metavar
    if self.is_flag or self.count:
        return None  # --flag / --no-flag: the name says it all
    return type_metavar(self.type_descriptor)


def _argument_type(self, ctx) -> str | None:
    return None  # the argument's name column already shows SOURCE


def _argument_usage(self) -> str:
    name = self.metavar or self.name.upper()
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def install() -> None:
    """Patch Typer's help rendering (idempotent). Typers before 0.26 print click's metavars already and
    lack these hooks; they are left alone."""
    option, argument = typer.core.TyperOption, typer.core.TyperArgument
    hooks = ("display_type_rich", "_usage_display_name", "type_descriptor")
    if not all(hasattr(argument, h) or h in getattr(argument, "__annotations__", {}) for h in hooks[:2]):
        return
    if "type_descriptor" not in getattr(typer.core._TyperParameter, "__annotations__", {}):
        return
    option.display_type_rich = _option_metavar
    argument.display_type_rich = _argument_type
    argument._usage_display_name = _argument_usage
    argument.display_name_raw = property(lambda self: self.metavar or self.name.upper())
