"""`${VAR}` and `${VAR:-default}` in the catalog's string values, from the server's environment.

The grammar (docs/environments.md):
- `${NAME}`: the variable's value; unset is a problem naming it and the JSON path of the value.
- `${NAME:-default}`: the value, or `default` when the variable is unset or empty (as in the
  shell). The default is taken literally up to the first `}` (no nesting, no `}` inside).
- `$${`: a literal `${` (the escape); a `$` not followed by `{` is itself.
- NAME is `[A-Za-z_][A-Za-z0-9_]*`; any other `${` (unclosed, or `${1}`) is a problem.
Only string values are substituted, never object keys (service and role names stay literal)
and never numbers. The result is substituted once: a value that contains `${` after
substitution is not expanded again.

Secrets never enter the catalog (it becomes Envoy configuration, which Envoy's admin and
`sidecar render` show): a variable of the servers' own settings (`SIDECAR_*`, among them the
JWT and policy keys) or whose name says it holds a secret (`SECRET`, `PASSWORD`, `TOKEN`,
`CREDENTIAL`, `PRIVATE_KEY`, `API_KEY` …, in any case) is refused, named, and never read.

`substitute` is pure: the environment is passed in (the server passes its own at each load).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from xds_server.catalog import Problem, json_path

# `$${` (escape) | `${NAME}` / `${NAME:-default}` | any other `${` (malformed).
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")

Loc = tuple[int | str, ...]

_SECRET_NAME = re.compile(
    r"^SIDECAR_|SECRET|PASSW(OR)?D|TOKEN|CREDENTIAL|PRIVATE_?KEY|API_?KEY|ACCESS_?KEY",
    re.IGNORECASE,
)


def refused(name: str) -> bool:
    """Whether `${name}` is refused: a variable that may hold a secret."""
    return _SECRET_NAME.search(name) is not None


def substitute_string(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """`text` with its references replaced, and what was wrong (one message per problem)."""
    if "${" not in text:
        return text, []
    problems: list[str] = []

    def one(m: re.Match[str]) -> str:
        found = m.group(0)
        if found == "$${":
            return "${"
        name = m.group("name")
        if name is None:
            problems.append(
                "a '${' that is not ${NAME} or ${NAME:-default} (write '$${' for a literal '${')"
            )
            return found
        if refused(name):
            problems.append(
                f"${{{name}}} is not substituted: a variable that may hold a secret (secrets "
                "never enter the catalog)"
            )
            return found
        value = environ.get(name)
        default = m.group("default")
        if default is not None:
            return value if value else default
        if value is None:
            problems.append(f"${{{name}}} is not set (and has no default: ${{{name}:-…}})")
            return found
        return value

    return _TOKEN.sub(one, text), problems


def substitute(data: Any, environ: Mapping[str, str]) -> tuple[Any, list[Problem]]:
    """`data` (decoded JSON) with every string value substituted, and every problem with its
    JSON path. `data` is not altered; what has no `${` is shared with it, not copied."""
    problems: list[Problem] = []

    def walk(value: Any, loc: Loc) -> Any:
        # A container none of whose values changed is returned as it is (no copy).
        if isinstance(value, str):
            if "${" not in value:
                return value
            out, wrong = substitute_string(value, environ)
            problems.extend(Problem(json_path(loc), w) for w in wrong)
            return out
        if isinstance(value, dict):
            changed = {}
            for k, v in value.items():
                new = walk(v, (*loc, k))
                if new is not v:
                    changed[k] = new
            return {**value, **changed} if changed else value
        if isinstance(value, list):
            items = [walk(v, (*loc, i)) for i, v in enumerate(value)]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    return walk(data, ()), problems
