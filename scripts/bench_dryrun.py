"""Dry-run speed and memory, on a copy of this repository's own sites and clusters.

Two scenarios, each run as a fresh `reconcile --dry-run` process, as a user runs it:
- nothing affected: every local stack applied, nothing changed. Must not start Node at all.
- every stack (`--all`), planned one at a time and four at a time (`--parallelism`): init and
  plan of each local stack, with the synthesis cached.
- one local cluster changed: clusters/dev.yaml gets one more node; the synthesis cache is
  cleared before each run, so each run synthesizes (Node, cdktf) and plans (the engine).
- one GCP cluster changed: clusters/icon.yaml gets one more node; without credentials the
  unit is synthesized at the base and at the head (the google provider loaded lazily) and
  compared offline. The cache is cleared before each run.

Printed per scenario: median and best wall time, peak RSS of the largest process in the run
(reconcile itself, Node or the engine: RUSAGE_CHILDREN of a wrapper process), and whether
Node was started (a `node` shim first on PATH records every start).
"""

from __future__ import annotations

import argparse
import json
import os
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
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
}


def child(argv: list[str]) -> int:
    """Run one command and print the peak RSS (KiB) of the largest process it waited for."""
    code = subprocess.run(argv, stdout=subprocess.DEVNULL).returncode
    print(json.dumps({"code": code, "maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return 0


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--_child", *argv], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, result["maxrss_kib"], result["code"]


def node_shim(directory: Path, marker: Path) -> None:
    real = shutil.which("node")
    if real is None:
        raise SystemExit("node is not on PATH")
    shim = directory / "node"
    shim.write_text(f'#!/bin/sh\necho started >> "{marker}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)


def scenario(name, argv, env, marker, runs, expect, before=None) -> dict:
    walls, rss, node = [], [], False
    for _ in range(runs):
        if before:
            before()
        marker.unlink(missing_ok=True)
        wall, maxrss, code = measure(argv, env)
        if code != expect:
            raise SystemExit(f"{name}: exit code {code}, expected {expect}")
        walls.append(wall)
        rss.append(maxrss)
        node = node or marker.exists()
    return {
        "scenario": name,
        "runs": runs,
        "median_wall_s": round(statistics.median(walls), 3),
        "min_wall_s": round(min(walls), 3),
        "peak_rss_mib": round(max(rss) / 1024, 1),
        "node_started": node,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as tmp:
        repo, shims = Path(tmp) / "repo", Path(tmp) / "shims"
        shims.mkdir()
        marker = Path(tmp) / "node-started"
        for name in ("sites", "clusters", "schema"):
            shutil.copytree(ROOT / name, repo / name)
        for rel in ("sites/local-slurm.yaml", "clusters/laptop.yaml"):  # real nodes: bench_cluster.py times those
            (repo / rel).unlink()
        env = {**os.environ, **GIT_ENV, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's Python keeps its bytecode (this machine sets it)
        for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
            subprocess.run(["git", *argv], cwd=repo, check=True, env=env)
        subprocess.run([RECONCILE, "apply", "--auto-approve", "--repo", str(repo)], check=True, env=env, stdout=subprocess.DEVNULL)
        node_shim(shims, marker)
        env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
        dry_run = [RECONCILE, "--dry-run", "--repo", str(repo)]
        results = [scenario("nothing affected", dry_run, env, marker, args.repeat, expect=0)]
        for parallelism in (1, 4):  # every stack's init and plan, synthesis cached
            results.append(scenario(f"every stack, {parallelism} at once", [*dry_run, "--all", "--parallelism", str(parallelism)],
                                    env, marker, args.repeat, expect=0))
        dev = repo / "clusters" / "dev.yaml"
        text = dev.read_text()
        assert text.count("    count: 2\n") == 1
        dev.write_text(text.replace("    count: 2\n", "    count: 3\n"))
        cache = repo / ".reconcile" / "cache" / "synth"  # the synthesis: definitions stay parsed and resolved
        results.append(
            scenario("one local cluster changed", dry_run, env, marker, args.repeat, expect=2,
                     before=lambda: shutil.rmtree(cache, ignore_errors=True))
        )
        dev.write_text(text)
        icon = repo / "clusters" / "icon.yaml"
        icon_text = icon.read_text()
        assert icon_text.count("    count: 1\n") == 1
        icon.write_text(icon_text.replace("    count: 1\n", "    count: 2\n"))
        results.append(
            scenario("one GCP cluster changed", dry_run, env, marker, args.repeat, expect=2,
                     before=lambda: shutil.rmtree(cache, ignore_errors=True))
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'scenario':<28}{'runs':>5}{'median s':>10}{'best s':>9}{'peak RSS MiB':>14}  node started")
        for r in results:
            print(f"{r['scenario']:<28}{r['runs']:>5}{r['median_wall_s']:>10}{r['min_wall_s']:>9}{r['peak_rss_mib']:>14}  {'yes' if r['node_started'] else 'no'}")
        serial, parallel = (r["median_wall_s"] for r in results[1:3])
        print(f"planning every stack 4 at once takes {parallel / serial:.2f} x the time of one at a time")
    if results[0]["node_started"]:
        print("FAIL: a dry-run with nothing affected started Node", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
