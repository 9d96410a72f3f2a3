"""ext_authz with `--policy-file`: a file it would misread refuses start-up, naming the file
and the JSON path; without a policy file the key file stays required."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import stack
from tests.support.tokens import TEST_SECRET


def test_a_policy_file_that_does_not_parse_refuses_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "policies.json"
    bad.write_text(json.dumps({"sidecar_policy_file": 1, "routes": [{"service": "a"}]}))
    env = {
        "SIDECAR_JWT_SECRET": TEST_SECRET.decode(),
        "SIDECAR_POLICY_KEY_FILE": "",
        "SIDECAR_POLICY_FILE": str(bad),
    }
    result = stack.run_authz_to_exit(env)
    assert result.returncode == 1
    assert f"--policy-file: {bad}: routes[0].path" in result.stderr


def test_without_a_policy_file_the_key_file_is_still_required() -> None:
    env = {"SIDECAR_JWT_SECRET": TEST_SECRET.decode(), "SIDECAR_POLICY_KEY_FILE": ""}
    result = stack.run_authz_to_exit(env)
    assert result.returncode == 1
    assert "--policy-key-file (SIDECAR_POLICY_KEY_FILE) is required" in result.stderr
