"""The options the commands share: flags made from the option dataclasses (dept.options), so `dept train` and
`dept tune` restate no default, type or help text (each field's `option(...)` metadata says what its flag
needs), and --verbose."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import typing
from collections.abc import Mapping
from typing import Any

import typer

VERBOSE = typer.Option(False, "--verbose", "-v", help="Log progress; show the traceback of an error.")


def setup_logging(verbose: bool) -> None:
    """--verbose: dept's progress at INFO; transformers' own messages only when they are errors."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def flag_fields(options: type) -> list[dataclasses.Field]:
    """The fields of an option dataclass that are flags (the others are set through --config only)."""
    return [f for f in dataclasses.fields(options) if f.metadata.get("flag", True)]


def option_of(options: type, name: str, note: str = "", panel: str | None = None) -> Any:
    """The typer option of one field: its default, its help (after its choices, before `note`), its envvar."""
    f = next(f for f in dataclasses.fields(options) if f.name == name)
    help = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        help = f"{' | '.join(f.metadata['choices'])}: {help}"
    if note:
        help = f"{help} {note}"
    return typer.Option(f.default, help=help, envvar=f.metadata.get("envvar"), rich_help_panel=panel)


def flag_parameters(options: type, notes: Mapping[str, str]) -> list[inspect.Parameter]:
    """One keyword parameter per flag field, typed as the field, in a help panel named after the dataclass."""
    types = typing.get_type_hints(options)
    panel = f"{options.__name__.removesuffix('Options')} options"
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=option_of(options, f.name, notes.get(f.name, ""), panel),
            annotation=types[f.name],
        )
        for f in flag_fields(options)
    ]


def with_flags(*sources: Any, skip: tuple[str, ...] = (), notes: Mapping[str, str] | None = None):
    """Give a command the flags of option dataclasses, or the parameters of another command, after its own.
    A name the command declares itself, one in `skip`, or one an earlier source has (tune's --output-dir) is left out;
    `notes` are appended to the dataclass flags' help. The command takes them as **flags."""

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params} | set(skip)
        for source in sources:
            if dataclasses.is_dataclass(source):
                offered = flag_parameters(source, notes or {})
            else:
                offered = inspect.signature(source).parameters.values()
            for p in offered:
                if p.name not in taken:
                    params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                    taken.add(p.name)

        @functools.wraps(command)
        def wrapper(**kwargs):
            return command(**kwargs)

        wrapper.__signature__ = own.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def flag_values(options: type, flags: Mapping[str, Any]) -> dict[str, Any]:
    """The values of an option dataclass's flags among a command's, to build it from them."""
    return {f.name: flags[f.name] for f in flag_fields(options) if f.name in flags}
