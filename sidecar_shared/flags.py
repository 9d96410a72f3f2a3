"""Command-line flags that also read `SIDECAR_<NAME>` environment variables.

A flag given on the command line wins over the variable; the variable wins over the default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any


def env_name(flag: str) -> str:
    return "SIDECAR_" + flag.upper().replace("-", "_")


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any,
    help: str,
    type: Callable[[str], Any] = str,
    environ: Mapping[str, str] = os.environ,
    required: bool = False,
) -> None:
    """`--flag`, whose default is `SIDECAR_<FLAG>` when set; `required`: one of the two must
    give it."""
    name = env_name(flag)
    raw = environ.get(name)
    if raw is not None:
        try:
            default = type(raw)
        except (TypeError, ValueError) as err:
            parser.error(f"{name}={raw!r}: {err}")
    parser.add_argument(
        f"--{flag}",
        type=type,
        default=default,
        required=required and raw is None,
        help=f"{help} (env {name})",
    )


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(text: str) -> bool:
    """A flag's on/off value: true/false, yes/no, on/off or 1/0."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"{text!r} is not true or false")


def one_of(*choices: str) -> Callable[[str], str]:
    """A flag's value that must be one of `choices`."""

    def choice(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    choice.__name__ = "/".join(choices)
    return choice


def add_switch(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    name = env_name(flag)
    default = environ.get(name, "").lower() in _TRUE
    parser.add_argument(
        f"--{flag}", action="store_true", default=default, help=f"{help} (env {name}=1)"
    )


class _RepeatedOverEnv(argparse.Action):
    """`append`, except that the first value on the command line replaces the list the
    variable gave (argparse's own `append` would add to it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        if current is None or current is self.default:
            current = []
        setattr(namespace, self.dest, [*current, values])


def add_repeated(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """A flag given once per value (`--role a --role b`); its variable holds the values
    separated by commas (`SIDECAR_ROLE=a,b`). Unset and not given: None."""
    name = env_name(flag)
    raw = environ.get(name)
    default = [v.strip() for v in raw.split(",") if v.strip()] if raw is not None else None
    parser.add_argument(
        f"--{flag}",
        action=_RepeatedOverEnv,
        default=default,
        help=f"{help} (repeat for several; env {name}, comma-separated)",
    )


def to_environ(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, str]:
    """The `SIDECAR_*` variables under which a process parsing `parser`'s flags sees the values
    in `args` (for flags both have; unset values are left out). A supervisor passes its own
    parsed settings to a child this way."""
    out: dict[str, str] = {}
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags or flags[0] == "--help" or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        out[env_name(flags[0][2:])] = str(value)
    return out
