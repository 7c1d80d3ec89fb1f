"""Hostile definition files are refused fast and small: `reconcile validate` on a copy of this
repository with one hostile file added, against the same command on the copy as it is.

Each row is a fresh process, as a user (or a pull request's CI job) runs it: median and best
wall time over the runs, the ratio of the median to the clean repository's, and the peak RSS of
the largest process (RUSAGE_CHILDREN of a wrapper). The tests check that each file is refused
with one located error within 200 MB (tests/test_load.py); this prints how long it takes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_dryrun import GIT_ENV, RECONCILE, ROOT, child, measure  # noqa: E402
from test_load import BOMB  # noqa: E402  (the alias bomb the tests refuse)

HOSTILE = {
    "20 MB of comments": ("clusters/big.yaml", "name: big\n" + "# padding\n" * 2_100_000),
    "alias bomb (9**10 values)": ("clusters/bomb.yaml", BOMB),
    "520,000 values in 1 MB": ("clusters/wide.yaml", "name: wide\nx: [" + "1," * 520_000 + "1]\n"),
    "nested 40 deep": ("clusters/deep.yaml", "name: deep\nx: " + "[" * 40 + "]" * 40 + "\n"),
    "2,000 unknown fields": ("clusters/many.yaml", "name: many\n" + "".join(f"unknown{i}: 1\n" for i in range(2000))),
    "alias-expanded strings": ("clusters/aliases.yaml", "name: aliases\nx: [&s " + "x" * 65_000 + ", " + ", ".join(["*s"] * 4_000) + "]\n"),
    "link to /dev/zero": ("sites/zero.yaml", None),
}


def row(name: str, argv: list[str], env: dict[str, str], runs: int, expect: int) -> tuple[str, float, float, float]:
    walls, peaks = [], []
    for _ in range(runs):
        wall, peak_kib, code = measure(argv, env)
        if code != expect:
            raise SystemExit(f"{name}: exit code {code}, expected {expect}")
        walls.append(wall)
        peaks.append(peak_kib)
    return name, statistics.median(walls), min(walls), max(peaks) / 1024


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, **GIT_ENV}
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as tmp:
        repo = Path(tmp) / "repo"
        for name in ("sites", "clusters", "schema"):
            shutil.copytree(ROOT / name, repo / name)
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=env)
        argv = [RECONCILE, "validate", "--repo", str(repo)]
        rows = [row("clean repository (baseline)", argv, env, args.repeat, expect=0)]
        for name, (rel, text) in HOSTILE.items():
            path = repo / rel
            if text is None:
                os.symlink("/dev/zero", path)
            else:
                path.write_text(text)
            rows.append(row(name, argv, env, args.repeat, expect=1))
            path.unlink()
    base = rows[0][1]
    print(f"{'reconcile validate with':<30}{'median s':>9}{'best s':>8}{'x clean':>9}{'peak RSS MiB':>14}")
    for name, median, best, peak in rows:
        print(f"{name:<30}{median:>9.2f}{best:>8.2f}{median / base:>9.2f}{peak:>14.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
