"""No-change dry-run with 4 sites on remote backends, next to the same definitions on local
state, measured in the same run.

Two repositories with the same 4 local-platform sites (local-a, local-b and two copies) and
their clusters: one keeps state on local disk, the other in buckets at endpoints of their own
(2 sites on moto's S3 server, 2 on the GCS emulator, on 127.0.0.1). Both are applied, then each
`reconcile --dry-run` (nothing changed: records read, nothing planned) is timed as a fresh
process. Printed: median and best wall time of each, and the difference (target: at most 0.3 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from emulators import GCS, S3, state_block  # noqa: E402  (the test suite's emulator processes)

RECONCILE = str(Path(sys.executable).parent / "reconcile")
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
}
SITES = {"local-a": "10.10", "local-b": "10.20", "local-c": "10.30", "local-d": "10.40"}


def build(repo: Path, states: dict[str, str]) -> None:
    """The 4 sites (with `states`: site -> its state block) and the local clusters."""
    (repo / "sites").mkdir(parents=True)
    shutil.copytree(ROOT / "clusters", repo / "clusters")
    shutil.copytree(ROOT / "schema", repo / "schema")
    for name in ("gpu-ai", "icon", "laptop"):
        (repo / "clusters" / f"{name}.yaml").unlink()
    hpc = repo / "clusters" / "slurm-hpc.yaml"
    hpc.write_text(hpc.read_text().replace("failover: [local-a, aws-zurich]", "failover: [local-a]"))
    template = (ROOT / "sites" / "local-a.yaml").read_text().split("\nstate:\n", 1)[0]
    for site, net in SITES.items():
        text = template.replace("name: local-a", f"name: {site}").replace("10.10.", f"{net}.").replace("local-a", site)
        (repo / "sites" / f"{site}.yaml").write_text(text + "\n" + states[site])
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *argv], cwd=repo, check=True, env={**os.environ, **GIT_ENV})


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        walls.append(time.perf_counter() - start)
        if code != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {code}, expected 0 (nothing to do)")
    return walls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-remote-") as tmp:
        tmp = Path(tmp)
        s3, gcs = S3(tmp / "s3.log").start(), GCS(tmp / "gcs.log").start()
        try:
            s3.make_bucket("bench-state")
            gcs.make_bucket("bench-state")
            remote = {
                site: state_block(*(("s3", "bench-state", s3.endpoint) if i < 2 else ("gcs", "bench-state", gcs.endpoint)), f"hpc/{site}")
                for i, site in enumerate(SITES)
            }
            local = {site: f"state:\n  backend: local\n  path: .reconcile/state/{site}\n" for site in SITES}
            build(tmp / "local", local)
            build(tmp / "remote", remote)
            env = {**os.environ, **GIT_ENV, **s3.env, **gcs.env, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
            results = {}
            for name in ("local", "remote"):
                repo = str(tmp / name)
                subprocess.run([RECONCILE, "apply", "--auto-approve", "--repo", repo], check=True, env=env, stdout=subprocess.DEVNULL)
            for _ in range(2):  # interleaved, so both see the same machine
                for name in ("local", "remote"):
                    results.setdefault(name, []).extend(timed([RECONCILE, "--dry-run", "--repo", str(tmp / name)], env, args.repeat // 2 + 1))
        finally:
            s3.stop()
            gcs.stop()
    print(f"{'no-change dry-run, 4 sites':<40}{'runs':>5}{'median s':>10}{'best s':>9}")
    for name, label in (("local", "on local state"), ("remote", "on remote backends (2 S3, 2 GCS)")):
        walls = results[name]
        print(f"  {label:<38}{len(walls):>5}{statistics.median(walls):>10.3f}{min(walls):>9.3f}")
    delta = statistics.median(results["remote"]) - statistics.median(results["local"])
    print(f"  remote - local (median): {delta:+.3f} s  (target: at most +0.300 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
