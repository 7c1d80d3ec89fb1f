"""Shared fixtures: real git repositories built from this repository's own definitions."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
# What the cloud fixtures add to the example dev cluster, where dev and slurm-hpc share a site:
# slurm-hpc's nodes may open SSH to dev's nodes (rsync of results), and nothing else.
DEV_ADMITS_SLURM_HPC = "network:\n  admit:\n    - cluster: slurm-hpc\n      ports: [22]\n"
# Real plan JSON recorded by HashiCorp's terraform-json project (MPL-2.0, its LICENSE beside
# them), copied in so that these tests run in every clone and fail, never skip.
PLAN_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "terraform-json"


def plan_fixture(name: str) -> dict:
    """One recorded plan, parsed."""
    import json

    return json.loads((PLAN_FIXTURES / name).read_text())

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


NPM_PACKAGES = ("@octokit/openapi@23.0.2", "@octokit/webhooks-examples@7.6.1")


@pytest.fixture(autouse=True)
def _no_interrupt_left_over():
    """A test that calls apply or plan directly starts with no interrupt pending, whichever test
    ran before it in this process (test files share processes under pytest-xdist)."""
    from reconciler import interrupt

    interrupt.reset()
    yield


@pytest.fixture(autouse=True)
def _no_content_cache_left_over():
    """Each `reconcile` run points the content caches at its own work directory; a test that
    then loads or resolves directly does so without them, whichever run came before."""
    from reconciler import load, unitcache

    load.use_cache(None)
    unitcache.use(None)
    yield
    load.use_cache(None)
    unitcache.use(None)


@pytest.fixture(scope="session")
def octokit() -> Path:
    """GitHub's OpenAPI description and webhook examples from npm, installed once (not committed)."""
    prefix = ROOT / ".reconcile" / "npm"
    modules = prefix / "node_modules" / "@octokit"
    if not all((modules / p.split("@")[1].split("/")[1]).is_dir() for p in NPM_PACKAGES):
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(prefix), *NPM_PACKAGES],
            check=True, capture_output=True, text=True,
        )
    return modules


@pytest.fixture(scope="session")
def github_description(octokit):
    from github_standin import Description

    return Description(octokit / "openapi" / "generated" / "api.github.com.json")


@pytest.fixture
def github(github_description):
    """A stand-in GitHub API for one repository; fails the test on any request the real API would refuse."""
    from github_standin import StandIn

    standin = StandIn(github_description).start()
    yield standin
    standin.stop()
    assert standin.violations == []


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files instead of comparing")


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch):
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("RECONCILE_ENGINE", "RECONCILE_STATE_ROOT", "RECONCILE_WORK_DIR"):
        monkeypatch.delenv(key, raising=False)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout


class Repo:
    """A temporary git repository holding a copy of the example sites and clusters."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def replace(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert text.count(old) == 1, f"{old!r} is not unique in {rel}"
        self.write(rel, text.replace(old, new))

    def place(self, cluster: str, site: str) -> None:
        """Change only a cluster's placement site (and drop that site from its failover list)."""
        path = f"clusters/{cluster}.yaml"
        text, count = re.subn(r"(placement:\n  site: )\S+", rf"\g<1>{site}", self.read(path))
        assert count == 1, path
        failover = re.search(r"(?m)^failover: \[(.*)\]$", text)
        others = [s for s in failover.group(1).split(", ") if s and s != site]
        self.write(path, text.replace(failover.group(0), f"failover: [{', '.join(others)}]"))

    def commit(self, message: str = "change") -> str:
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return git(self.path, "rev-parse", "HEAD").strip()

    def git(self, *args: str) -> str:
        return git(self.path, *args)


# The example site whose clusters run for real (runtime: slurm, as root) and its cluster: only
# the tests of that runtime take them (make_repo(real_runtime=True)), so applying the other
# examples stays quick and needs nothing installed.
REAL_RUNTIME_FILES = ("sites/local-slurm.yaml", "clusters/laptop.yaml")


def node_module(name: str):
    """A module of the node package as nodes run it, imported from its source (the reconciler
    itself never imports it)."""
    import importlib
    import sys

    from reconciler import nodepkg

    sys.path.insert(0, str(nodepkg.source_dir().parent))
    try:
        return importlib.import_module(f"vcnode.{name}")
    finally:
        sys.path.pop(0)


def make_repo(path: Path, real_runtime: bool = False) -> Repo:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("sites", "clusters", "schema"):
        shutil.copytree(ROOT / name, path / name)
    if not real_runtime:
        for rel in REAL_RUNTIME_FILES:
            (path / rel).unlink()
    (path / ".gitignore").write_text("/.reconcile/\n")
    git(path, "init", "-q", "-b", "main")
    repo = Repo(path)
    repo.commit("example definitions")
    return repo


@pytest.fixture
def repo(tmp_path) -> Repo:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def cli(capsys):
    """Run `reconcile` in-process: returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return int(code), out, err

    return run


@pytest.fixture(scope="session")
def applied_template(tmp_path_factory) -> Path:
    """The example repository with its local stacks applied (embedded engine), once per session:
    `applied` copies it. State and records hold no absolute path (backends are configured
    at every init), so a copy is the same repository applied in another place."""
    import contextlib
    import io

    repo = make_repo(tmp_path_factory.mktemp("applied") / "repo")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded"])
    assert code == 0, out.getvalue()
    return repo.path


@pytest.fixture
def applied(tmp_path, applied_template) -> Repo:
    """The example repository with its local stacks applied: a copy of the session's template."""
    path = tmp_path / "repo"
    shutil.copytree(applied_template, path, symlinks=True)
    return Repo(path)


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


def check_golden(path: Path, actual: str, update: bool) -> None:
    if update or not path.exists():
        if not update:
            pytest.fail(f"golden file {path} is missing: run scripts/test --update-golden")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert actual == path.read_text(), f"{path} differs: run scripts/test --update-golden and review the diff"


def synthesize_stacks(platform_name: str, stacks: dict) -> dict[str, str]:
    """{stack name: Terraform JSON text} for {stack name: spec}, all in one cdktf App."""
    from reconciler.synth import render_json
    from rpi import cdk, registry
    from rpi.spec import ClusterSpec

    platform = registry.platform(platform_name)

    def build(app):
        out = {}
        for name, spec in stacks.items():
            out[name] = cdk.new_stack(app, name)
            if isinstance(spec, ClusterSpec):
                platform.cluster(out[name], spec)
            else:
                platform.landing_zone(out[name], spec)
        return out

    return {name: render_json(doc) for name, doc in cdk.synthesize(build).items()}


# ---------------------------------------------------------------- remote state backends


@pytest.fixture(scope="session")
def emulators(tmp_path_factory):
    """moto's S3 server and the GCS emulator, one process each for the session."""
    from emulators import KINDS

    logs = tmp_path_factory.mktemp("emulators")
    running = {kind: cls(logs / f"{kind}.log").start() for kind, cls in KINDS.items()}
    yield running
    for emulator in running.values():
        emulator.stop()


_buckets = iter(range(1, 10_000))


def remote_repo(path: Path, emulator, monkeypatch=None) -> tuple[Repo, str]:
    """The example repository's local sites and their clusters, with their state in a fresh
    bucket of `emulator` (at its endpoint); the cloud sites left out, so that the emulator's
    credentials never meet a real cloud. Returns the repository and the bucket."""
    from emulators import state_block

    repo = make_repo(path)
    for rel in ("sites/aws-frankfurt.yaml", "sites/aws-zurich.yaml", "sites/gcp-netherlands.yaml", "sites/gcp-zurich.yaml",
                "clusters/gpu-ai.yaml", "clusters/icon.yaml"):
        (repo.path / rel).unlink()
    repo.replace("clusters/slurm-hpc.yaml", "failover: [local-a, aws-zurich]", "failover: [local-a]")
    bucket = f"state-{emulator.kind}-{next(_buckets)}"
    emulator.make_bucket(bucket)
    for site in ("local-a", "local-b"):
        rel = f"sites/{site}.yaml"
        text = repo.read(rel)
        head, _ = text.split("\nstate:\n", 1)
        repo.write(rel, head + "\n" + state_block(emulator.kind, bucket, emulator.endpoint, f"hpc/{site}"))
    repo.commit("state in a bucket")
    if monkeypatch is not None:
        for key, value in emulator.env.items():
            monkeypatch.setenv(key, value)
    return repo, bucket


@pytest.fixture(scope="session")
def remote_templates(emulators, tmp_path_factory):
    """`template(kind)`: the example's local stacks applied once per session with their state in
    a bucket of that emulator: (repository path, bucket, the bucket's objects after the apply).
    `applied_remote_copy` gives each test that bucket back as it was, and a copy of the repository."""
    import contextlib
    import io

    made = {}

    def template(kind: str):
        if kind not in made:
            emulator = emulators[kind]
            with emulator.client_env():
                repo, bucket = remote_repo(tmp_path_factory.mktemp(f"applied-{kind}") / "repo", emulator)
                out = io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                    code = main(["apply", "--auto-approve", "--repo", str(repo.path), "--engine", "embedded"])
            assert code == 0, out.getvalue()
            made[kind] = (repo.path, bucket, emulator.objects(bucket))
        return made[kind]

    return template


def applied_remote_copy(emulator, template, path: Path, monkeypatch) -> tuple[Repo, str]:
    """The applied template of `emulator`'s kind, for one test: its bucket emptied and filled with
    the objects the apply left, and the repository copied to `path`."""
    source, bucket, objects = template(emulator.kind)
    for key in emulator.objects(bucket):
        emulator.delete(bucket, key)
    for key, data in objects.items():
        emulator.put(bucket, key, data)
    shutil.copytree(source, path, symlinks=True)
    for key, value in emulator.env.items():
        monkeypatch.setenv(key, value)
    return Repo(path), bucket


def without_login_pool(spec):
    """`spec` with its login pools left out: the controller then runs on the first other node."""
    import dataclasses

    pools = tuple(p for p in spec.pools if p.role != "login")
    return dataclasses.replace(spec, pools=pools, controller=pools[0].hostnames[0])


def assert_providers_rules_hold(specs: dict, synthesized: dict[str, str]) -> None:
    """Every synthesized stack (golden stacks and variants), against its pinned provider's facts
    (rpi.provider_rules; tests/test_provider_rules.py puts the defects back)."""
    from rpi import provider_rules

    for name, text in synthesized.items():
        stack = json.loads(text)
        assert [str(f) for f in provider_rules.check(stack, specs[name].site)] == [], name
        assert provider_rules.unknown_attributes(stack) == [], name
