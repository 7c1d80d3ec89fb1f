"""Growth with the number of clusters (`scripts/bench --scale`): a synthetic repository of 10
sites (8 local, 1 gcp, 1 aws) and N clusters built from the examples, at N = 10, 100, 1,000.

Each cluster is one of the example clusters renamed: `dev` (emulated local nodes) on the local
sites, one in a hundred `icon` on the GCP site and one in a hundred `gpu-ai` on the AWS site.
The cloud sites have no credentials here, so their units are planned offline, as a laptop
does. Each step is a fresh `reconcile` process, as a user runs it:

- validate, twice: the first parses every file and fills the parse cache, the second reads it;
- the first dry-run (every stack initialized and planned, nothing applied yet);
- apply (the local stacks; the cloud ones stay pending: no credentials);
- a no-change dry-run;
- a one-change dry-run (one local cluster gets one more node);
- synth of every stack (`reconcile synth --out`), the synthesis cache emptied first;

with the peak RSS of the largest process of any step. The targets of issue 10 are printed
beside the 1,000-cluster figures. The target for the first dry-run is 2 x (sum of the
per-stack plan times / 2 cores), where the per-stack time is measured at N = 10 with
`--parallelism 1` (one stack at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECONCILE = str(Path(sys.executable).parent / "reconcile")
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
}
LOCAL_SITES = 8


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def generate(repo: Path, clusters: int) -> None:
    """The synthetic repository, committed."""
    (repo / "sites").mkdir(parents=True)
    (repo / "clusters").mkdir()
    shutil.copytree(ROOT / "clusters" / "profiles", repo / "clusters" / "profiles")
    shutil.copytree(ROOT / "schema", repo / "schema")
    local = (ROOT / "sites" / "local-a.yaml").read_text()
    for i in range(LOCAL_SITES):
        text = local.replace("name: local-a", f"name: local-{i}").replace("10.10.", f"10.{100 + i}.")
        text = text.replace(".reconcile/state/local-a", f".reconcile/state/local-{i}").replace("dc=local-a", f"dc=local-{i}")
        text = text.replace("  clusters_range: 10.", "  cluster_prefix: 26\n  clusters_range: 10.")  # 512 clusters a site
        (repo / "sites" / f"local-{i}.yaml").write_text(text)
    shutil.copy(ROOT / "sites" / "gcp-netherlands.yaml", repo / "sites" / "gcp-netherlands.yaml")
    shutil.copy(ROOT / "sites" / "aws-frankfurt.yaml", repo / "sites" / "aws-frankfurt.yaml")
    templates = {name: (ROOT / "clusters" / f"{name}.yaml").read_text() for name in ("dev", "icon", "gpu-ai")}
    for n in range(clusters):
        if n % 100 == 50:
            template, site = "icon", "gcp-netherlands"
        elif n % 100 == 99:
            template, site = "gpu-ai", "aws-frankfurt"
        else:
            template, site = "dev", f"local-{n % LOCAL_SITES}"
        text = re.sub(r"(?m)^name: .*$", f"name: c{n:04d}", templates[template], count=1)
        text = re.sub(r"(placement:\n  site: )\S+", rf"\g<1>{site}", text)
        text = re.sub(r"(?m)^failover: \[.*\]$", "failover: []", text)
        (repo / "clusters" / f"c{n:04d}.yaml").write_text(text)
    (repo / ".gitignore").write_text("/.reconcile/\n/synth/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"{clusters} clusters")


def child(argv: list[str]) -> int:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    print(json.dumps({"code": done.returncode, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "stderr": done.stderr[-2000:]}))
    return 0


def measure(argv: list[str], env: dict[str, str], expect: tuple[int, ...]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--_child", *argv], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["code"] not in expect:
        raise SystemExit(f"{' '.join(argv)}: exit {result['code']}, expected {expect}:\n{result['stderr']}")
    return wall, result["maxrss_kib"]


def run_scale(base: Path, clusters: int, env: dict[str, str]) -> dict:
    repo = base / f"n{clusters}"
    generate(repo, clusters)
    at = ["--repo", str(repo)]
    row, peak = {"clusters": clusters}, 0

    def step(name: str, argv: list[str], expect: tuple[int, ...], repeat: int = 1) -> None:
        """One timed run, or the median of `repeat` for a step that changes nothing."""
        nonlocal peak
        runs = [measure([RECONCILE, *argv, *at], env, expect) for _ in range(repeat)]
        wall, rss = statistics.median(w for w, _ in runs), max(r for _, r in runs)
        row[name] = wall
        peak = max(peak, rss)
        print(f"  {clusters:>5} clusters  {name:<18} {wall:8.2f} s  (peak RSS {rss / 1024:,.0f} MiB"
              f"{f', median of {repeat}' if repeat > 1 else ''})", flush=True)

    step("validate", ["validate"], (0,))  # the first: every file parsed, the parse cache filled
    step("validate, cached", ["validate"], (0,))
    step("first dry-run", ["--dry-run"], (2,))
    step("apply", ["apply", "--auto-approve"], (0, 2))  # cloud clusters stay pending: no credentials
    step("no-change dry-run", ["--dry-run"], (0, 2), repeat=3)
    dev = repo / "clusters" / "c0000.yaml"
    dev.write_text(dev.read_text().replace("    count: 2\n", "    count: 3\n", 1))
    step("one-change dry-run", ["--dry-run"], (2,))
    dev.write_text(dev.read_text().replace("    count: 3\n", "    count: 2\n", 1))
    shutil.rmtree(repo / ".reconcile" / "cache" / "synth", ignore_errors=True)  # every stack synthesized, none from the cache
    step("synth", ["synth", "--out", str(repo / "synth")], (0,))
    row["peak_rss_mib"] = peak / 1024
    shutil.rmtree(repo, ignore_errors=True)
    return row


def per_stack_plan_s(base: Path, env: dict[str, str]) -> float:
    """Seconds one stack's init and plan take, one at a time (N = 10, --parallelism 1)."""
    repo = base / "serial"
    generate(repo, 10)
    wall, _ = measure([RECONCILE, "--dry-run", "--parallelism", "1", "--repo", str(repo)], env, (2,))
    stacks = LOCAL_SITES + 10  # the cloud sites are not planned without credentials
    shutil.rmtree(repo, ignore_errors=True)
    return wall / stacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--_child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="10,100,1000", help="cluster counts (default 10,100,1000)")
    args = parser.parse_args()
    if args._child:
        return child(args._child)
    env = {**os.environ, **GIT_ENV, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    # A user's Python keeps the bytecode it compiles; where PYTHONDONTWRITEBYTECODE is set (this
    # machine), every process would compile the reconciler again and the figures would show it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("RECONCILE_ENGINE", "RECONCILE_STATE_ROOT", "RECONCILE_WORK_DIR", "GITHUB_ACTIONS", "GITHUB_TOKEN",
                 "GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"):
        env.pop(name, None)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"growth: 10 sites ({LOCAL_SITES} local, 1 gcp, 1 aws), clusters from the examples, one fresh process a step")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = Path(tmp)
        serial = per_stack_plan_s(base, env)
        rows = [run_scale(base, n, env) for n in sizes]
    names = ["validate", "validate, cached", "first dry-run", "apply", "no-change dry-run", "one-change dry-run", "synth"]
    print("\n| clusters | " + " | ".join(names) + " | peak RSS |")
    print("|---:|" + "---:|" * (len(names) + 1))
    for row in rows:
        print(f"| {row['clusters']:,} | " + " | ".join(f"{row[n]:.1f} s" for n in names) + f" | {row['peak_rss_mib']:,.0f} MiB |")
    big = rows[-1]
    stacks = big["clusters"] + LOCAL_SITES
    bound = 2 * serial * stacks / 2
    print(f"\ntargets at {big['clusters']:,} clusters ({stacks:,} stacks; one stack's init and plan alone: {serial:.2f} s):")
    for name, got, target in (("no-change dry-run", big["no-change dry-run"], 1.5), ("one-change dry-run", big["one-change dry-run"], 5.0),
                              ("synth", big["synth"], 45.0), ("first dry-run", big["first dry-run"], bound)):
        print(f"  {name:<20} {got:8.1f} s  target {target:8.1f} s  {'met' if got <= target else 'NOT met'}")
    print(f"  {'peak RSS':<20} {big['peak_rss_mib']:8,.0f} MiB target {1536:8,} MiB {'met' if big['peak_rss_mib'] <= 1536 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
