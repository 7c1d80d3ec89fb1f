"""Synthesis of one cloud unit against the plain import of its provider package.

A provider package's own `__init__` imports all of its ~1,500 submodules. `rpi.cdk` loads only
the jsii assembly and the submodules a stack uses. Measured here, each in a fresh process as a
user's run would be, on this repository's own definitions:

- baseline: `import cdktf` and then `import cdktf_cdktf_provider_<name>` (nothing synthesized);
- ours: resolve the definitions and synthesize one unit of that platform (the ICON cluster on
  gcp-netherlands, the gpu-ai cluster on aws-frankfurt) through `reconciler.synth`, Node included.

Printed per platform: median wall time of each, peak RSS, and ours / baseline. Synthesizing a
whole unit should take a fraction of the time the plain import alone takes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS = {"gcp": "cluster:icon@gcp-netherlands", "aws": "cluster:gpu-ai@aws-frankfurt"}
PACKAGES = {"gcp": "cdktf_cdktf_provider_google", "aws": "cdktf_cdktf_provider_aws"}


def _plain_import(package: str) -> None:
    import cdktf  # noqa: F401

    __import__(package)


def _synth_one(key: str) -> None:
    from reconciler.gitsource import GitSource
    from reconciler.run import desired
    from reconciler.synth import synthesize

    units = desired(GitSource(ROOT).working_tree()).units
    (text,) = synthesize([units[key]]).values()
    if '"resource"' not in text:
        raise SystemExit(f"{key}: synthesized no resources")


def child(mode: str, arg: str) -> int:
    start = time.perf_counter()
    _plain_import(arg) if mode == "import" else _synth_one(arg)
    seconds = time.perf_counter() - start
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": seconds, "maxrss_kib": rss}))
    return 0


def measure(mode: str, arg: str, runs: int) -> dict:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    seconds, rss = [], []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, "--_child", mode, arg], capture_output=True, text=True, env=env, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{mode} {arg} failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        seconds.append(result["seconds"])
        rss.append(result["maxrss_kib"])
    return {"median_s": round(statistics.median(seconds), 2), "peak_rss_mib": round(max(rss) / 1024, 1)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        return child(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for platform, key in UNITS.items():
        baseline = measure("import", PACKAGES[platform], args.repeat)
        ours = measure("synth", key, args.repeat)
        ratio = round(ours["median_s"] / baseline["median_s"], 2)
        results.append({"platform": platform, "unit": key, "baseline_plain_import": baseline, "synth_one_unit": ours, "ratio": ratio})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'platform':<9}{'plain import s':>15}{'py RSS MiB':>11}{'synth 1 unit s':>16}{'py RSS MiB':>11}{'ratio':>7}  unit")
    for r in results:
        b, o = r["baseline_plain_import"], r["synth_one_unit"]
        print(f"{r['platform']:<9}{b['median_s']:>15}{b['peak_rss_mib']:>11}{o['median_s']:>16}{o['peak_rss_mib']:>11}{r['ratio']:>7}  {r['unit']}")
    print(
        f"(median of {args.repeat} fresh processes each; ratio = synth one unit / plain import of the provider; "
        "RSS of the Python process, Node not counted)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
