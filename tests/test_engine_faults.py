"""Engine faults end in one clear error naming the stack, exit 1, never a traceback.

The engine here is a stand-in on PATH (`tofu`, a shell script): it answers `version` and
`init` as an engine does, then misbehaves the way a broken or killed engine would. The real
engines run everywhere else in the suite; these faults cannot be made to happen in them on
purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GIT_ENV

RECONCILE = str(Path(sys.executable).with_name("reconcile"))

STANDIN = """#!/bin/sh
for arg in "$@"; do case "$arg" in -chdir=*) ;; *) command="$arg"; break;; esac; done
case "$command" in
  version) echo '{"terraform_version": "1.9.0"}'; exit 0;;
  init) exit 0;;
  plan) [ "$FAULT" = crash ] && kill -SEGV $$; [ "$FAULT" = hang ] && exec sleep 60; : > reconcile.tfplan; exit 0;;
  show) [ "$FAULT" = truncated ] && { printf '{"format_version": "1.2", "resource_chan'; exit 0; }
        [ "$FAULT" = "not-a-plan" ] && { echo '{"resource_changes": "everything"}'; exit 0; }
        echo 'Error: something that is not JSON'; exit 0;;
esac
exit 0
"""


@pytest.mark.parametrize(
    "fault, expected",
    [
        ("garbage", "answered with no JSON"),
        ("truncated", "answered with no JSON"),
        ("not-a-plan", "gave a plan this cannot read"),
        ("crash", "was killed by signal 11"),
        ("hang", "ran past its time limit of 2 s and was stopped (RECONCILE_STACK_TIMEOUT_S sets the limit)"),
    ],
)
def test_an_engine_fault_is_one_error_naming_the_stack(repo, tmp_path, fault, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tofu").write_text(STANDIN)
    (bin_dir / "tofu").chmod(0o755)
    env = {**os.environ, **GIT_ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAULT": fault, "RECONCILE_STACK_TIMEOUT_S": "2"}
    done = subprocess.run([RECONCILE, "--dry-run", "--engine", "tofu", "--site", "local-a", "--repo", str(repo.path)],
                          capture_output=True, text=True, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "site local-a" in output and expected in output, output


def test_a_missing_node_is_one_sentence_naming_what_needs_it(repo, tmp_path):
    """cdktf runs in Node: where it is missing (here: JSII_NODE names nothing, the way a PATH
    without node would), the run says so and plans nothing."""
    env = {**os.environ, **GIT_ENV, "JSII_NODE": str(tmp_path / "no-node-here")}
    done = subprocess.run([RECONCILE, "--dry-run", "--site", "local-a", "--repo", str(repo.path)],
                          capture_output=True, text=True, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output
    assert "Node.js is not on PATH, and synthesizing site local-a" in output and "nothing was planned" in output
