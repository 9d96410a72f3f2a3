"""Every flag of every command also reads its `SIDECAR_<FLAG>` variable: a walk over every
parser (so a new flag without one fails here), and the commands that used to ignore theirs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from ext_authz import settings as authz_settings
from sidecar import cli
from sidecar_shared.flags import env_name
from xds_server import settings as xds_settings

# Values tried for a variable, in order, until one parses into something other than the
# flag's default (a flag no value fits fails the walk: add one here).
SAMPLES = ("sample-value", "7", "0.25", "1", "0", "delta", "http", "redis", "debug", "10m", "a,b")

# What each command needs to parse at all, beside the variable under test.
NEEDS: dict[str, tuple[dict[str, str], list[str]]] = {
    "sidecar token": ({"SIDECAR_SUB": "someone"}, []),
    "sidecar probe": ({}, ["127.0.0.1:1"]),
    "sidecar explain": ({}, ["GET", "/"]),
}


def _commands() -> dict[str, Callable[[Mapping[str, str]], argparse.ArgumentParser]]:
    """Every command, as a parser built against an environment."""

    def sidecar(name: str) -> Callable[[Mapping[str, str]], argparse.ArgumentParser]:
        return lambda environ: _subcommands(cli.build_parser(environ))[name]

    out = {f"sidecar {n}": sidecar(n) for n in _subcommands(cli.build_parser({}))}
    out["xds-server"] = xds_settings.build_parser
    out["ext-authz"] = authz_settings.build_parser
    return out


def _flags(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and long[0] != "--help":
            yield action


def _flag(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))[2:]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parsed(
    build: Callable[[Mapping[str, str]], argparse.ArgumentParser],
    command: str,
    environ: dict[str, str],
) -> argparse.Namespace | None:
    needed_env, argv = NEEDS.get(command, ({}, []))
    try:
        return build({**needed_env, **environ}).parse_args(argv)
    except SystemExit:  # the sample does not fit this flag
        return None


def _reads_its_variable(
    build: Callable[[Mapping[str, str]], argparse.ArgumentParser],
    command: str,
    flag: str,
    dest: str,
) -> bool:
    plain = _parsed(build, command, {})
    assert plain is not None, f"{command} does not parse without variables"
    for sample in SAMPLES:
        given = _parsed(build, command, {env_name(flag): sample})
        if given is not None and getattr(given, dest) != getattr(plain, dest):
            return True
    return False


def test_every_flag_of_every_command_reads_its_variable() -> None:
    commands = _commands()
    assert {"sidecar up", "sidecar bootstrap", "sidecar token", "sidecar probe"} <= set(commands)
    ignored = [
        f"{command} --{_flag(action)} ({env_name(_flag(action))})"
        for command, build in commands.items()
        for action in _flags(build({**NEEDS.get(command, ({}, []))[0]}))
        if not _reads_its_variable(build, command, _flag(action), action.dest)
    ]
    assert not ignored, "flags that read no variable: " + ", ".join(ignored)


def test_every_flag_names_its_variable_in_its_help() -> None:
    for command, build in _commands().items():
        for action in _flags(build({})):
            assert env_name(_flag(action)) in (action.help or ""), f"{command} {_flag(action)}"


def _bootstrap(capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str) -> Any:
    args = cli.build_parser(env).parse_args(["bootstrap", *argv])
    assert cli.cmd_bootstrap(args) == 0
    return json.loads(capsys.readouterr().out)


def _xds_port(config: Any) -> int:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "xds_cluster"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return int(endpoint["address"]["socket_address"]["port_value"])


def test_sidecar_bootstrap_reads_the_ports_node_and_protocol_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _bootstrap(
        capsys,
        {
            "SIDECAR_XDS_PORT": "28000",
            "SIDECAR_ADMIN_PORT": "29901",
            "SIDECAR_NODE_ID": "edge-7",
            "SIDECAR_NODE_CLUSTER": "edge",
            "SIDECAR_XDS_PROTOCOL": "delta",
        },
    )
    assert _xds_port(config) == 28000
    assert config["admin"]["address"]["socket_address"]["port_value"] == 29901
    assert config["node"] == {**config["node"], "id": "edge-7", "cluster": "edge"}
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"


def test_sidecar_bootstrap_renders_a_delta_bootstrap_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ads = _bootstrap(capsys, {}, "--xds-protocol", "delta")["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    ads = _bootstrap(capsys, {}, "--xds-protocol", "sotw")["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert _bootstrap(capsys, {})["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"


def test_a_flag_on_the_command_line_wins_over_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _bootstrap(capsys, {"SIDECAR_XDS_PORT": "28000"}, "--xds-port", "28001")
    assert _xds_port(config) == 28001


def test_a_bad_protocol_is_refused_from_the_flag_and_from_the_variable() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser({}).parse_args(["bootstrap", "--xds-protocol", "grpc"])
    with pytest.raises(SystemExit):
        cli.build_parser({"SIDECAR_XDS_PROTOCOL": "grpc"})


def test_token_probe_and_status_read_their_variables() -> None:
    env = {
        "SIDECAR_SUB": "alice",
        "SIDECAR_ROLE": "admin, viewer",
        "SIDECAR_TENANT": "acme",
        "SIDECAR_TTL": "15m",
        "SIDECAR_SERVICE": "xds",
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_XDS_HTTP": "10.0.0.1:18080",
        "SIDECAR_JSON": "1",
    }
    parser = cli.build_parser(env)
    token = parser.parse_args(["token"])
    assert (token.sub, token.role, token.tenant, token.ttl) == (
        "alice",
        ["admin", "viewer"],
        "acme",
        900,
    )
    probe = parser.parse_args(["probe", "127.0.0.1:1"])
    assert (probe.service, probe.timeout) == ("xds", 0.5)
    status = parser.parse_args(["status"])
    assert (status.xds_http, status.json) == ("10.0.0.1:18080", True)


def test_roles_on_the_command_line_replace_those_of_the_variable() -> None:
    parser = cli.build_parser({"SIDECAR_ROLE": "admin"})
    args = parser.parse_args(["token", "--sub", "u", "--role", "a", "--role", "b"])
    assert args.role == ["a", "b"]
    assert cli.build_parser({}).parse_args(["token", "--sub", "u"]).role is None


def test_token_still_requires_a_subject_from_the_flag_or_the_variable() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser({}).parse_args(["token"])
