"""`${VAR}` substitution in catalog strings (xds_server/substitute.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xds_server.substitute import substitute, substitute_string

ENV = {"ORDERS_HOST": "10.0.0.7", "EMPTY": "", "PORT": "8443"}


def test_a_set_variable_is_replaced_by_its_value() -> None:
    assert substitute_string("http://${ORDERS_HOST}:${PORT}", ENV) == ("http://10.0.0.7:8443", [])


def test_a_default_is_used_when_the_variable_is_unset_or_empty() -> None:
    assert substitute_string("${NOPE:-127.0.0.1}", ENV) == ("127.0.0.1", [])
    assert substitute_string("${EMPTY:-x}", ENV) == ("x", [])
    assert substitute_string("${ORDERS_HOST:-x}", ENV) == ("10.0.0.7", [])
    assert substitute_string("${NOPE:-}", ENV) == ("", [])


def test_an_unset_variable_without_default_is_a_problem_with_its_name_and_path() -> None:
    data = {"services": [{"service_name": "a", "internal_url": "http://${ORDERS_HOSTT}:80"}]}
    out, problems = substitute(data, ENV)
    assert [(p.path, p.message) for p in problems] == [
        (
            "services[0].internal_url",
            "${ORDERS_HOSTT} is not set (and has no default: ${ORDERS_HOSTT:-…})",
        )
    ]
    assert out == data  # the reference left as it was


def test_a_set_but_empty_variable_without_default_is_empty() -> None:
    assert substitute_string("a${EMPTY}b", ENV) == ("ab", [])


def test_dollar_dollar_brace_is_a_literal_and_a_lone_dollar_is_itself() -> None:
    assert substitute_string("$${ORDERS_HOST} costs $5", ENV) == ("${ORDERS_HOST} costs $5", [])


def test_a_malformed_reference_is_a_problem() -> None:
    for text in ("${", "${1}", "${A-B}", "x${ORDERS_HOST"):
        _, problems = substitute_string(text, ENV)
        assert problems and "not ${NAME}" in problems[0], text


def test_keys_and_numbers_are_never_substituted() -> None:
    data = {"roles": {"${ORDERS_HOST}": ["a:GET"]}, "n": 5, "ok": True, "none": None}
    assert substitute(data, ENV) == (data, [])


def test_a_variable_that_may_hold_a_secret_is_refused_and_never_read() -> None:
    environ = {"SIDECAR_JWT_SECRET": "k", "DB_PASSWORD": "p", "github_token": "t", "HOST": "h"}
    for name in ("SIDECAR_JWT_SECRET", "DB_PASSWORD", "github_token", "MY_API_KEY"):
        out, problems = substitute_string(f"http://${{{name}:-x}}", environ)
        assert out == f"http://${{{name}:-x}}"
        assert problems == [
            f"${{{name}}} is not substituted: a variable that may hold a secret (secrets never "
            "enter the catalog)"
        ]
    assert substitute_string("${HOST}", environ) == ("h", [])


def test_a_value_is_substituted_once() -> None:
    assert substitute_string("${X}", {"X": "${ORDERS_HOST}"}) == ("${ORDERS_HOST}", [])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_json_without_a_reference_comes_back_equal(data: object) -> None:
    if "${" in repr(data):
        return
    assert substitute(data, ENV) == (data, [])


@given(st.text())
def test_escaping_every_dollar_brace_gives_the_text_back(text: str) -> None:
    """Writing each `${` as `$${` is how a literal is kept, whatever the text."""
    escaped = text.replace("${", "$${")
    assert substitute_string(escaped, {}) == (text, [])


def test_what_holds_no_reference_is_shared_not_copied() -> None:
    data = {"services": [{"internal_url": "http://${ORDERS_HOST}:80"}, {"internal_url": "x"}]}
    out, _ = substitute(data, ENV)
    assert out["services"][1] is data["services"][1]
    assert data["services"][0]["internal_url"] == "http://${ORDERS_HOST}:80"  # not altered
    unchanged = {"a": [1, {"b": "c"}]}
    assert substitute(unchanged, ENV)[0] is unchanged
