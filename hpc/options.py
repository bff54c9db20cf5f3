"""A stage's own command-line options (fyp.stages.Option) as argparse flags, and back to argv.

The submitting CLI parses them once; Slurm tasks receive them again as the job script's arguments, so
`hpc.task` parses exactly what the user typed and the stage sees the same `opts` everywhere.
"""
from __future__ import annotations

import argparse

from fyp.stages import Stage


def add_stage_options(parser: argparse.ArgumentParser, stage: Stage) -> None:
    group = parser.add_argument_group(f"{stage.name} options")
    for option in stage.options:
        group.add_argument(option.flag, **option.kwargs)


class OptionError(ValueError):
    """A stage option given with an empty value."""


def stage_opts(stage: Stage, namespace: argparse.Namespace) -> dict:
    """The stage's options as parsed; an empty value (`--reward ''`, `--model ,`) is refused rather than
    taken as the option's default (often "all")."""
    opts = {option.dest: getattr(namespace, option.dest) for option in stage.options}
    for option in stage.options:
        values = opts[option.dest] if isinstance(opts[option.dest], list) else [opts[option.dest]]
        for value in values:
            if isinstance(value, str) and not value.strip(" ,"):
                default = option.kwargs.get("default")
                hint = f" (its default is {default})" if default not in (None, [], "") else ""
                raise OptionError(f"{stage.name}: {option.flag} {value!r} is empty: give a value, or leave "
                                  f"{option.flag} out{hint}")
    return opts


def to_argv(stage: Stage, opts: dict) -> list[str]:
    """The flags that reproduce `opts` (only values that differ from the option's default)."""
    argv: list[str] = []
    for option in stage.options:
        kwargs = option.kwargs
        if option.dest not in opts:
            continue
        value = opts[option.dest]
        if value == kwargs.get("default"):
            continue
        action = kwargs.get("action")
        if action == "store_true":
            argv += [option.flag] if value else []
        elif action == "store_false":
            argv += [] if value else [option.flag]
        elif action == "append":
            for item in value or []:
                argv += [option.flag, str(item)]
        elif isinstance(value, (list, tuple)):
            argv += [option.flag, *[str(v) for v in value]]
        elif value is not None:
            argv += [option.flag, str(value)]
    return argv
