"""State is never shared, truncated or trusted blindly; apply runs only what was reviewed.

Each test reproduces one way the earlier main lost data or ran what nobody reviewed, and
shows what happens now.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest

from reconciler import health
from reconciler.model import HealthCheck

STATE = (".reconcile", "state")


def state_dir(repo, site: str):
    return repo.path.joinpath(*STATE, site)


def validate(cli, repo):
    return cli("validate", "--repo", str(repo.path))


def dry_run_json(cli, repo):
    code, out, err = cli("--dry-run", "--json", "--repo", str(repo.path))
    return code, json.loads(out)


def second_site(repo, name: str, **edits: str) -> None:
    """A copy of local-a under another name, with `edits` (old -> new) applied to its text."""
    text = repo.read("sites/local-a.yaml").replace("name: local-a", f"name: {name}")
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    repo.write(f"sites/{name}.yaml", text)


# ---------------------------------------------------------------- 1. one state place per site


def test_two_sites_with_one_state_path_are_refused_naming_both_files(repo, cli):
    second_site(repo, "local-c", **{"10.10.": "10.11."})  # new name and CIDR, the same state path
    code, out, err = validate(cli, repo)
    assert code == 1
    assert re.search(r"sites/local-a\.yaml:\d+:\d+: error: state\.path: site local-a keeps its state in local directory "
                     r"\.reconcile/state/local-a, the same place as site local-c's \(sites/local-c\.yaml:\d+:\d+\)", err)
    assert re.search(r"sites/local-c\.yaml:\d+:\d+: error: state\.path: .* the same place as site local-a's", err)
    # the plan refuses the same, before anything is read or written
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 1 and not repo.path.joinpath(*STATE).exists()


def test_state_places_are_compared_after_normalization_on_every_backend(repo, cli):
    second_site(repo, "local-c", **{"10.10.": "10.11.", "path: .reconcile/state/local-a": "path: ./.reconcile//state/local-a/"})
    repo.replace("sites/gcp-netherlands.yaml", "prefix: gcp-netherlands", "prefix: /gcp-zurich/")
    repo.replace("sites/aws-frankfurt.yaml", "key_prefix: aws-frankfurt", "key_prefix: aws-zurich/nested")
    code, out, err = validate(cli, repo)
    assert code == 1
    assert "site local-c keeps its state in local directory .reconcile/state/local-a, the same place as site local-a's" in err
    assert "site gcp-netherlands keeps its state in gs://swisstwins-reconcile-state/gcp-zurich, the same place as site gcp-zurich's" in err
    assert "site aws-frankfurt keeps its state in s3://swisstwins-reconcile-state/aws-zurich/nested, nested with site aws-zurich's" in err


@pytest.mark.parametrize("path, message", [
    ('""', "path must name a directory below the state root, not the state root itself"),
    (".", "path must name a directory below the state root, not the state root itself"),
    (".git", "path must not be inside .git"),
    (".git/state", "path must not be inside .git"),
    ("../elsewhere", "path must be relative to the state root and stay inside it"),
    ("/var/tmp/state", "path must be relative to the state root and stay inside it"),
])
def test_state_paths_that_leave_the_state_root_are_refused(repo, cli, path, message):
    repo.replace("sites/local-b.yaml", "path: .reconcile/state/local-b", f"path: {path}")
    code, out, err = validate(cli, repo)
    assert code == 1
    assert re.search(rf"sites/local-b\.yaml:\d+:\d+: error: state(\.path)?: {re.escape(message)}", err), err


def test_a_state_path_through_a_symlink_is_refused_and_nothing_is_written_outside(repo, cli, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    repo.path.joinpath(*STATE).mkdir(parents=True)
    os.symlink(outside, state_dir(repo, "local-b"))  # committed in git, so it is on the CI path too
    code, out, err = validate(cli, repo)
    assert code == 1 and "sites/local-b.yaml" in err and "outside the state root" in err
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded")
    assert code == 1 and "outside the state root" in err
    assert list(outside.iterdir()) == []


def test_a_state_file_that_is_a_symlink_out_is_refused(applied, cli, tmp_path):
    """Each site's directory is resolved once a run; each state file in it is still looked at."""
    outside = tmp_path / "outside.tfstate"
    state = applied.path / ".reconcile" / "state" / "local-a" / "cluster-dev.tfstate"
    state.rename(outside)
    os.symlink(outside, state)
    code, out, err = validate(cli, applied)
    assert code == 1 and "cluster-dev.tfstate" in err and "outside the state root" in err
    state.unlink()
    os.symlink(applied.path / ".git" / "config", state)
    code, out, err = validate(cli, applied)
    assert code == 1 and "inside a .git directory" in err


def test_state_and_record_files_are_the_owners_only(applied):
    directory = state_dir(applied, "local-a")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert "cluster-dev.tfstate" in files and "cluster-dev.reconcile.json" in files
    for path in directory.rglob("*"):  # the volumes' directories (local platform) too
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert any((directory / "volumes").iterdir())


# ---------------------------------------------------------------- 2. state checked before it is trusted


@pytest.fixture
def applied_twice(applied, cli):
    """dev applied, then grown by one node: the engine's backup holds the first state."""
    applied.replace("clusters/dev.yaml", "    count: 2\n", "    count: 3\n")
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path), "--engine", "embedded")
    assert code == 0, out + err
    return applied


def restore_command(text: str) -> list[str]:
    match = re.search(r"To restore it: reconcile (restore-state \S+)", text)
    assert match, text
    return match.group(1).split()


@pytest.mark.parametrize("damage", ["empty", "truncated", "another stack's"])
def test_a_damaged_state_is_not_planned_over_and_the_backup_is_named(applied_twice, cli, damage):
    repo = applied_twice
    state = state_dir(repo, "local-a") / "cluster-dev.tfstate"
    backup = state.with_name("cluster-dev.tfstate.backup")
    good = state.read_bytes()
    if damage == "empty":
        state.write_bytes(b"")
    elif damage == "truncated":
        state.write_bytes(good[: len(good) // 2])
    else:
        state.write_bytes((state_dir(repo, "local-a") / "landing-zone.tfstate").read_bytes())
    damaged = state.read_bytes()
    repo.replace("clusters/dev.yaml", "    count: 3\n", "    count: 4\n")

    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 1, out + err
    assert f"the state of cluster dev on local-a ({state})" in out
    assert f"The last good state is in {backup}" in out
    assert "Nothing was planned for this stack" in out
    assert "    plan: " not in out.split("cluster dev on local-a", 1)[1].split("\n\n", 1)[0]  # no resource plan at all
    code, out, err = cli("apply", "--auto-approve", "--repo", str(repo.path))
    assert code == 1 and "nothing was applied" in err
    assert state.read_bytes() == damaged  # the engine never ran on it

    # the printed command restores the last good state; the next plan is the difference only
    code, out, err = cli(*restore_command(out), "--repo", str(repo.path))
    assert code == 0, out + err
    assert state.with_name("cluster-dev.tfstate").exists() and list(state.parent.glob("cluster-dev.tfstate.damaged-*"))
    code, plan = dry_run_json(cli, repo)
    assert code == 2
    (dev,) = [u for u in plan["units"] if u["key"] == "cluster:dev@local-a"]
    assert dev["changes"]["create"] == 2  # nodes 2 and 3 on top of the backup's two; never all of them


def test_a_state_older_than_the_last_apply_is_refused(applied_twice, cli):
    repo = applied_twice
    state = state_dir(repo, "local-a") / "cluster-dev.tfstate"
    older = json.loads(state.with_name("cluster-dev.tfstate.backup").read_text())
    state.write_text(json.dumps(older))  # a copy put back by hand, one apply behind
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    assert code == 1
    assert re.search(r"is older than the last apply \(serial \d+, the last apply wrote serial \d+\)", out)


def test_the_record_keeps_the_state_it_was_written_after(applied):
    state = state_dir(applied, "local-a") / "cluster-dev.tfstate"
    record = json.loads(state.with_name("cluster-dev.reconcile.json").read_text())
    document = json.loads(state.read_text())
    assert (record["state_lineage"], record["state_serial"], record["resources"]) == (
        document["lineage"], document["serial"], len(document["resources"]),
    )


# ---------------------------------------------------------------- 3. commands from definitions


PROBE = """health_check:
  command: [sh, -c, 'env > "$0"; test -n "$RECONCILE_LOGIN"', {out}]
  timeout_s: 30
"""


def test_a_health_command_is_shown_and_runs_without_tokens_or_credentials(applied, cli, tmp_path, monkeypatch):
    seen = tmp_path / "probe-env"
    secrets = {
        "GITHUB_TOKEN": "ghs_not_for_probes",
        "AWS_SECRET_ACCESS_KEY": "not-for-probes",
        "AWS_SESSION_TOKEN": "not-for-probes",
        "GOOGLE_CREDENTIALS": "{}",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "not-for-probes",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    applied.replace("clusters/dev.yaml", "    size_gb: 500\n", "    size_gb: 500\n  on_move: keep\n")
    applied.write("clusters/dev.yaml", applied.read("clusters/dev.yaml") + PROBE.format(out=seen))
    applied.place("dev", "local-b")

    code, out, err = cli("--dry-run", "--repo", str(applied.path))
    assert code == 2
    shown = f"health check, new or changed (runs on the apply runner, scrubbed environment): command: sh -c"
    assert shown in out and str(seen) in out

    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    environment = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert not set(secrets) & set(environment)
    assert not any(name.startswith(("AWS_", "GOOGLE_", "GITHUB_", "ACTIONS_", "CLOUDSDK_")) for name in environment)
    assert environment["RECONCILE_LOGIN"].startswith("10.20.")  # the target's login address

    # planned again with nothing changed, the probe is no longer news
    applied.commit("dev on local-b with a probe")
    code, out, err = cli("--dry-run", "--repo", str(applied.path), "--all")
    assert "health check, new or changed" not in out


def test_the_plan_comment_shows_a_new_health_command(applied, cli, tmp_path):
    applied.write("clusters/dev.yaml", applied.read("clusters/dev.yaml") + PROBE.format(out="/tmp/x"))
    out_dir = tmp_path / "comment"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path))
    assert code == 2, out + err
    body = (out_dir / "part-1.md").read_text()
    assert "**RUNS ON THE APPLY RUNNER** cluster dev on local-a: its health check is new or changed" in body
    assert "command: sh -c" in body


def test_a_probe_that_outlives_its_timeout_is_stopped_with_its_children(tmp_path):
    marker = tmp_path / "child-alive"
    probe = HealthCheck(command=["sh", "-c", f"(sleep 3; touch {marker}) & sleep 30"], timeout_s=1)
    started = time.monotonic()
    ok, detail = health._run(probe, "10.0.0.5", 1)
    assert not ok and "no answer within 1 s" in detail
    assert time.monotonic() - started < 5
    time.sleep(3.5)
    assert not marker.exists()  # the background child was stopped with its group


# ---------------------------------------------------------------- 6. no silent acceptance


def test_overlapping_site_networks_are_refused(repo, cli):
    second_site(repo, "local-c", **{"path: .reconcile/state/local-a": "path: .reconcile/state/local-c", "10.10.0.0/16": "10.10.0.0/15", "10.10.0.0/24": "10.11.0.0/24", "10.10.128.0/17": "10.11.128.0/17"})
    code, out, err = validate(cli, repo)
    assert code == 1
    assert re.search(r"sites/local-a\.yaml:\d+:\d+: error: network\.cidr: 10\.10\.0\.0/16 overlaps site local-c's 10\.10\.0\.0/15", err)
    assert re.search(r"sites/local-c\.yaml:\d+:\d+: error: network\.cidr: 10\.10\.0\.0/15 overlaps site local-a's 10\.10\.0\.0/16", err)


def test_a_placement_zone_must_be_one_of_the_sites(repo, cli):
    repo.replace("clusters/dev.yaml", "  site: local-a\n", "  site: local-a\n  zone: rack-9\n")
    code, out, err = validate(cli, repo)
    assert code == 1
    assert "clusters/dev.yaml:7:9: error: placement.zone: zone 'rack-9' is not a zone of site local-a (zones: rack-1, rack-2" in err


def test_yaml_in_a_folder_that_is_not_read_is_reported(repo, cli):
    repo.write("clusters/archive/old.yaml", repo.read("clusters/dev.yaml"))
    repo.write("sites/eu/local-z.yml", "name: local-z\n")
    code, out, err = validate(cli, repo)
    assert code == 1
    assert "clusters/archive/old.yaml:1:1: error: this file is not read" in err
    assert "sites/eu/local-z.yml:1:1: error: this file is not read" in err
