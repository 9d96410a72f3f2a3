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
) -> None:
    name = env_name(flag)
    raw = environ.get(name)
    if raw is not None:
        try:
            default = type(raw)
        except (TypeError, ValueError) as err:
            parser.error(f"{name}={raw!r}: {err}")
    parser.add_argument(f"--{flag}", type=type, default=default, help=f"{help} (env {name})")


def add_switch(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    environ: Mapping[str, str] = os.environ,
) -> None:
    name = env_name(flag)
    default = environ.get(name, "").lower() in ("1", "true", "yes", "on")
    parser.add_argument(
        f"--{flag}", action="store_true", default=default, help=f"{help} (env {name}=1)"
    )
