"""End to end: a pull request adds a cluster, its plan is commented, it merges, and the merge
is applied on the local platform exactly as reviewed, with the outcome reported back.

GitHub itself is the stand-in built from its OpenAPI description (see github_standin.py); the
event files are real webhook payloads from @octokit/webhooks-examples with this run's numbers.
"""

from __future__ import annotations

import copy
import json

import pytest

from reconciler.comment import MARKER, parse_reviewed

CLIMATE = """# yaml-language-server: $schema=../schema/cluster.schema.json
name: climate
profiles: [base, slurm]
placement:
  site: local-a
failover: [local-b]
flavor: slurm
node_pools:
  compute:
    role: compute
    count: 2
    cores: 32
    memory_gb: 128
storage:
  on_move: keep
  shared:
    size_gb: 1000
"""


@pytest.fixture(scope="module")
def webhooks(octokit):
    catalogue = json.loads((octokit / "webhooks-examples" / "api.github.com" / "index.json").read_text())
    return {entry["name"]: entry["examples"] for entry in catalogue}


@pytest.fixture
def actions(monkeypatch, github, tmp_path):
    """The environment GitHub Actions gives a step."""
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_stand_in_token_value")
    monkeypatch.setenv("GITHUB_REPOSITORY", "swisstwins/hpc-sites")
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")

    def event(name: str, payload: dict) -> None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(payload))
        monkeypatch.setenv("GITHUB_EVENT_NAME", name)
        monkeypatch.setenv("GITHUB_EVENT_PATH", str(path))

    return event


def pull_request_event(webhooks, number: int, head: str, base: str) -> dict:
    payload = copy.deepcopy(next(e for e in webhooks["pull_request"] if e["action"] == "opened"))
    payload["number"] = payload["pull_request"]["number"] = number
    payload["pull_request"]["head"]["sha"], payload["pull_request"]["base"]["sha"] = head, base
    payload["repository"]["full_name"] = payload["pull_request"]["head"]["repo"]["full_name"] = "swisstwins/hpc-sites"
    return payload


def push_event(webhooks, before: str, after: str, message: str) -> dict:
    payload = copy.deepcopy(webhooks["push"][0])
    payload.update(before=before, after=after, ref="refs/heads/main")
    payload["head_commit"]["message"] = message
    payload["repository"]["full_name"] = "swisstwins/hpc-sites"
    return payload


def open_pull_request(applied, github, webhooks, actions, number=12):
    base = applied.git("rev-parse", "main").strip()
    applied.git("checkout", "-q", "-b", "add-climate")
    applied.write("clusters/climate.yaml", CLIMATE)
    head = applied.commit("Add cluster climate")
    github.add_pull_request(number, "Add cluster climate", head_sha=head)
    actions("pull_request", pull_request_event(webhooks, number, head, base))
    return base, head


def plan_and_comment(cli, applied, tmp_path, head):
    out_dir = tmp_path / "comment"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", "HEAD")
    assert code == 2, out + err
    code, out, err = cli("comment", "--from", str(out_dir), "--expect-head", head, "--repo", str(applied.path))
    assert code == 0, err


def merge(applied, github, actions, webhooks, base, number=12):
    applied.git("checkout", "-q", "main")
    applied.git("merge", "-q", "--no-ff", "add-climate", "-m", f"Merge pull request #{number} from swisstwins/add-climate")
    after = applied.git("rev-parse", "HEAD").strip()
    github.merge_pull_request(number, after)
    actions("push", push_event(webhooks, base, after, f"Merge pull request #{number} from swisstwins/add-climate"))
    return after


def test_pull_request_to_apply(applied, cli, github, webhooks, actions, tmp_path):
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    (posted,) = github.comments_on(12)
    assert posted.startswith(MARKER.rstrip(" ->")) and "climate" in posted
    reviewed = parse_reviewed(posted)
    assert reviewed["head"] == head and "cluster:climate@local-a" in reviewed["units"]

    plan_and_comment(cli, applied, tmp_path, head)  # planned again: the same comment, edited in place
    assert len(github.comments_on(12)) == 1

    after = merge(applied, github, actions, webhooks, base)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 0, out + err
    assert "cluster climate on local-a: applied" in out
    result = github.comments_on(12)[-1]
    assert "climate" in result and "applied" in result
    assert github.statuses[-1]["sha"] == after and github.statuses[-1]["state"] == "success"
    token = "ghs_stand_in_token_value"
    assert all(token not in body for body in github.comments_on(12)) and token not in out + err


@pytest.mark.parametrize("fanned_out", [False, True], ids=["one apply", "apply --only"])
def test_apply_refuses_what_was_not_reviewed(applied, cli, github, webhooks, actions, tmp_path, fanned_out):
    """The reviewed-hash gate, in a single apply and in a fanned-out runner's `apply --only`."""
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    applied.replace("clusters/climate.yaml", "count: 2", "count: 8")  # pushed after the review, never planned
    applied.commit("more nodes, unreviewed")
    after = merge(applied, github, actions, webhooks, base)
    statuses = len(github.statuses)
    only = ("--only", "cluster:climate@local-a") if fanned_out else ()
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", *only, "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1
    assert "the configuration of cluster:climate@local-a differs from the one reviewed on #12; plan again" in err
    assert not (applied.path / ".reconcile" / "state" / "local-a" / "cluster-climate.tfstate").exists()
    if fanned_out:  # a runner of one wave does not report: the report job does, once
        assert len(github.statuses) == statuses
    else:
        assert github.statuses[-1]["sha"] == after and github.statuses[-1]["state"] == "failure"


@pytest.mark.parametrize("fanned_out", [False, True], ids=["one apply", "apply --only"])
def test_destroy_needs_the_label(applied, cli, github, webhooks, actions, tmp_path, fanned_out):
    """The destroy and data-loss labels, in a single apply and in a fanned-out runner's `apply --only`."""
    only = ("--only", "cluster:dev@local-a") if fanned_out else ()
    base = applied.git("rev-parse", "main").strip()
    applied.git("checkout", "-q", "-b", "add-climate")
    (applied.path / "clusters" / "dev.yaml").unlink()
    head = applied.commit("Retire dev")
    github.add_pull_request(12, "Retire dev", head_sha=head)
    actions("pull_request", pull_request_event(webhooks, 12, head, base))
    plan_and_comment(cli, applied, tmp_path, head)
    assert "dev" in github.comments_on(12)[0]
    merge(applied, github, actions, webhooks, base)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", *only, "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1 and "reconcile:allow-destroy" in err
    github.issues[12]["labels"].append("reconcile:allow-destroy")
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", *only, "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1 and "reconcile:allow-data-loss" in err  # dev's shared filesystem holds data
    github.issues[12]["labels"].append("reconcile:allow-data-loss")
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", *only, "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 0, out + err


def test_a_failed_comment_never_hides_the_apply(applied, cli, github, webhooks, actions, tmp_path, monkeypatch):
    monkeypatch.setenv("RECONCILE_GITHUB_BACKOFF_S", "0.01")  # the same retries, without waiting out GitHub's backoff
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    merge(applied, github, actions, webhooks, base)
    for _ in range(5):
        github.fail("POST", r"/statuses/", 500)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert "cluster climate on local-a: applied" in out
    assert code == 1 and "could not report the outcome" in err
    assert not [f for f in github.faults if "statuses" in f.path.pattern], "every retry was made"


def test_comment_for_a_moved_head_is_not_posted(applied, cli, github, webhooks, actions, tmp_path):
    base, head = open_pull_request(applied, github, webhooks, actions)
    out_dir = tmp_path / "comment"
    cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", "HEAD")
    github.issues[12]["head_sha"] = "f" * 40  # a newer push landed meanwhile
    code, out, err = cli("comment", "--from", str(out_dir), "--repo", str(applied.path))
    assert code == 1 and "has moved on" in err
    assert github.comments_on(12) == []


def test_drift_issue_follows_live_state(applied, cli, github, actions):
    state = applied.path / ".reconcile" / "state" / "local-a" / "cluster-dev.reconcile.json"
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "config_hash": "applied-by-hand"}))  # live no longer matches git
    code, out, err = cli("plan", "--all", "--drift-issue", "--repo", str(applied.path))
    assert code == 2 and "drift issue #" in err
    (issue,) = [i for i in github.issues.values() if "drift" in i["labels"]]
    assert issue["state"] == "open" and "cluster dev on local-a" in issue["body"]
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    code, out, err = cli("plan", "--all", "--drift-issue", "--repo", str(applied.path))
    assert code == 0 and issue["state"] == "closed"


def test_the_merged_pull_request_comes_from_the_api_not_the_commit_message(applied, cli, github, webhooks, actions, tmp_path):
    github.add_pull_request(7, "Unrelated, labelled to allow destroys", labels=["reconcile:allow-destroy"])
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    applied.git("checkout", "-q", "main")
    applied.git("merge", "-q", "--no-ff", "add-climate", "-m", "Add cluster climate (#7)")  # the author names #7
    after = applied.git("rev-parse", "HEAD").strip()
    github.merge_pull_request(12, after)
    actions("push", push_event(webhooks, base, after, "Add cluster climate (#7)"))
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 0, out + err
    assert "cluster climate on local-a: applied" in out
    assert github.comments_on(7) == []  # #7 is neither read for a review nor reported on
    assert "applied" in github.comments_on(12)[-1]


def test_a_push_that_no_pull_request_merged_applies_nothing(applied, cli, github, webhooks, actions):
    base = applied.git("rev-parse", "main").strip()
    github.add_pull_request(12, "Reviewed elsewhere")
    applied.write("clusters/climate.yaml", CLIMATE)
    after = applied.commit("Add cluster climate (#12)")  # pushed straight to main, naming a pull request
    actions("push", push_event(webhooks, base, after, "Add cluster climate (#12)"))
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1
    assert f"no merged pull request has {after[:7]} as its merge commit, so no reviewed plan applies" in err
    assert not (applied.path / ".reconcile" / "state" / "local-a" / "cluster-climate.tfstate").exists()
    assert github.statuses[-1]["sha"] == after and github.statuses[-1]["state"] == "failure"


def test_a_label_covers_only_what_the_reviewed_plan_showed(applied, cli, github, webhooks, actions, tmp_path):
    """The reviewed block records what each decision must cover; a label does not reach a
    destroy the reviewed plan did not show (here: a comment from before that record existed)."""
    base = applied.git("rev-parse", "main").strip()
    applied.git("checkout", "-q", "-b", "add-climate")
    (applied.path / "clusters" / "dev.yaml").unlink()
    head = applied.commit("Retire dev")
    github.add_pull_request(12, "Retire dev", labels=["reconcile:allow-destroy", "reconcile:allow-data-loss"], head_sha=head)
    actions("pull_request", pull_request_event(webhooks, 12, head, base))
    plan_and_comment(cli, applied, tmp_path, head)
    (comment_id,) = list(github.comments)
    body = github.comments[comment_id]["body"]
    assert ',"needs":{"data":["terraform_data.storage_shared"],"destroy":true}' in body
    github.comments[comment_id]["body"] = body.replace(',"needs":{"data":["terraform_data.storage_shared"],"destroy":true}', "")
    merge(applied, github, actions, webhooks, base)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1
    assert "the `reconcile:allow-destroy` decision covers only what the reviewed plan showed, and it did not show this" in err
    assert (applied.path / ".reconcile" / "state" / "local-a" / "cluster-dev.reconcile.json").exists()


# ---------------------------------------------------------------- only our own comments count


def test_another_users_marker_comment_is_left_alone(applied, cli, github, webhooks, actions, tmp_path):
    base, head = open_pull_request(applied, github, webhooks, actions)
    theirs = github.comment_as("mallory", 12, MARKER + "\nthis is not the plan")
    plan_and_comment(cli, applied, tmp_path, head)
    plan_and_comment(cli, applied, tmp_path, head)  # again: our sticky comment is edited, theirs never
    assert github.comments[theirs]["body"] == MARKER + "\nthis is not the plan"
    ours = [c for c in github.comments.values() if c["user"] == "github-actions[bot]"]
    assert len(ours) == 1 and "climate" in ours[0]["body"] and len(github.comments) == 2


def test_a_forged_reviewed_block_is_ignored(applied, cli, github, webhooks, actions, tmp_path):
    base, head = open_pull_request(applied, github, webhooks, actions)
    out_dir = tmp_path / "forged"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", "HEAD")
    forged = (out_dir / "part-1.md").read_text()  # the right hashes, posted by somebody else
    assert parse_reviewed(forged)["head"] == head
    github.comment_as("mallory", 12, forged)
    merge(applied, github, actions, webhooks, base)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1
    assert "no reviewed plan was found on #12" in err
    assert not (applied.path / ".reconcile" / "state" / "local-a" / "cluster-climate.tfstate").exists()


def test_a_reviewed_plan_for_an_older_head_is_refused(applied, cli, github, webhooks, actions, tmp_path):
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    applied.write("NOTES.md", "pushed after the review; the definitions are unchanged\n")
    newer = applied.commit("a later commit, never planned")
    github.issues[12]["head_sha"] = newer
    github.issues[12]["commits"].append(newer)
    merge(applied, github, actions, webhooks, base)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--base", base, "--head", "HEAD", "--repo", str(applied.path))
    assert code == 1
    assert f"#12's reviewed plan was made for {head[:7]}, but its last head commit is {newer[:7]}: plan the pull request again" in err
    assert not (applied.path / ".reconcile" / "state" / "local-a" / "cluster-climate.tfstate").exists()


def test_a_plan_artifact_with_forged_hashes_is_refused_by_the_comment_job(applied, cli, github, webhooks, actions, tmp_path):
    """A fork's plan run writes the artifact, so what it says was reviewed is recomputed by the
    comment job's own code from the planned commit's definitions; a hash that disagrees is
    refused, naming the stack, and nothing is posted."""
    base, head = open_pull_request(applied, github, webhooks, actions)
    out_dir = tmp_path / "comment"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", "HEAD")
    assert code == 2, out + err
    part = out_dir / "part-1.md"
    reviewed = parse_reviewed(part.read_text())
    honest = reviewed["units"]["cluster:climate@local-a"]["config_hash"]
    part.write_text(part.read_text().replace(honest, "0" * len(honest)))  # what a fork's run could write
    code, out, err = cli("comment", "--from", str(out_dir), "--expect-head", head, "--repo", str(applied.path))
    assert code == 1
    assert "cluster:climate@local-a: the artifact's configuration hash 000000000000 is not the one" in err, err
    assert f"definitions give here ({honest[:12]})" in err and github.comments_on(12) == []
    part.write_text(part.read_text().replace("0" * len(honest), honest))  # the honest artifact is posted
    code, out, err = cli("comment", "--from", str(out_dir), "--expect-head", head, "--repo", str(applied.path))
    assert code == 0, err
    assert len(github.comments_on(12)) == 1


def test_a_fork_comment_is_rendered_by_the_trusted_job_from_the_definitions_alone(applied, cli, github, webhooks, actions, tmp_path):
    """For a fork's pull request the plan run is the fork's code: with --render the comment job
    plans the planned commit itself and posts its own comment, byte for byte what the honest
    plan gives, whatever the artifact's text says."""
    base, head = open_pull_request(applied, github, webhooks, actions)
    out_dir = tmp_path / "comment"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", head)
    assert code == 2, out + err
    honest = (out_dir / "part-1.md").read_text()
    (out_dir / "part-1.md").write_text(honest.replace("cluster climate on local-a", "nothing to see here"))  # the fork's text
    code, out, err = cli("comment", "--from", str(out_dir), "--expect-head", head, "--render", "--base", base,
                         "--repo", str(applied.path))
    assert code == 0, err
    (posted,) = github.comments_on(12)
    assert posted == honest and "nothing to see here" not in posted


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "meta.json").write_text('{"pr": 12, "head_sha": "x", "parts": 100000}'), "names no number of parts from 1 to 50"),
        (lambda d: (d / "meta.json").write_text("not json"), "meta.json is not JSON"),
        (lambda d: (d / "part-1.md").write_text("x" * 70_000), "part-1.md is larger than 65,536 characters"),
        (lambda d: ((d / "part-1.md").unlink(), (d / "part-1.md").symlink_to("/etc/passwd")), "has no regular file part-1.md"),
    ],
)
def test_a_damaged_plan_artifact_is_refused_as_data(applied, cli, github, webhooks, actions, tmp_path, damage, expected):
    """The artifact comes from an untrusted run: read by exact names, within bounds, never
    followed through a link; anything else is refused with one sentence and nothing posted."""
    base, head = open_pull_request(applied, github, webhooks, actions)
    out_dir = tmp_path / "comment"
    code, out, err = cli("plan", "--comment-dir", str(out_dir), "--repo", str(applied.path), "--head", "HEAD")
    damage(out_dir)
    code, out, err = cli("comment", "--from", str(out_dir), "--repo", str(applied.path))
    assert code == 1 and expected in err and "Traceback" not in err, err
    assert github.comments_on(12) == []


def test_a_fanned_out_apply_is_gated_per_unit_and_reported_once(applied, cli, github, webhooks, actions, tmp_path):
    """apply.yml's fan-out, job by job: `waves`, one `apply --only` per unit of each wave (the
    reviewed-plan gate holds for each), then `report` over their documents, read as data."""
    base, head = open_pull_request(applied, github, webhooks, actions)
    plan_and_comment(cli, applied, tmp_path, head)
    after = merge(applied, github, actions, webhooks, base)
    repo = ("--base", base, "--head", "HEAD", "--repo", str(applied.path))
    results = tmp_path / "results"
    results.mkdir()
    code, out, err = cli("waves", "--json", *repo)
    assert code == 0, err
    (results / "waves.json").write_text(out)
    waves = json.loads(out)["waves"]
    assert [[u["key"] for u in w["units"]] for w in waves] == [[], ["cluster:climate@local-a"], [], []]
    comments, statuses = len(github.comments_on(12)), len(github.statuses)
    code, out, err = cli("apply", "--auto-approve", "--pr", "auto", "--json", "--only", "cluster:climate@local-a", *repo)
    assert code == 0, out + err
    (results / "apply-0").mkdir()
    (results / "apply-0" / "unit.txt").write_text("cluster:climate@local-a\n")
    (results / "apply-0" / "apply.json").write_text(out)
    assert (len(github.comments_on(12)), len(github.statuses)) == (comments, statuses), "a unit's runner reported on its own"

    code, out, err = cli("report", "--from", str(results), "--pr", "auto", "--repo", str(applied.path))
    assert code == 0, out + err
    assert "cluster climate on local-a: applied" in out
    posted = github.comments_on(12)[-1]
    assert "| cluster climate on local-a | apply | applied |" in posted and len(github.comments_on(12)) == comments + 1
    assert github.statuses[-1]["sha"] == after and github.statuses[-1]["state"] == "success"

    # A unit whose runner was lost is missing, never applied; a runner's error is its outcome.
    document = json.loads((results / "waves.json").read_text())
    document["waves"][0]["units"] = [{**waves[1]["units"][0], "key": "site:local-a", "title": "site local-a"}]
    (results / "waves.json").write_text(json.dumps(document))
    (results / "apply-1").mkdir()
    (results / "apply-1" / "unit.txt").write_text("site:local-a\n")
    (results / "apply-1" / "apply.json").write_text(json.dumps({"error": "refused, nothing was applied", "exit_code": 1}))
    (results / "apply-0" / "apply.json").unlink()
    code, out, err = cli("report", "--from", str(results), "--pr", "auto", "--repo", str(applied.path))
    assert code == 1
    posted = github.comments_on(12)[-1]
    assert "**FAILED** site local-a: refused, nothing was applied" in posted
    assert "| cluster climate on local-a | apply | **failed** |" in posted and "could not be read" in posted
    assert github.statuses[-1]["state"] == "failure"
