"""Policy as tests: checkov (pinned in tests/policy/checkov-version, in .venv-checkov, which
scripts/test sets up: its pins conflict with ours) over the golden JSON of every cloud. Each
finding it accepts is a line of tests/policy/checkov-baseline.txt, naming the check, the
golden file and the resource, and the reason the check does not apply. A new finding fails,
and so does a baseline line that no longer matches a finding (the baseline stays exact). The
findings the security review named as real may never be accepted. (zizmor, over the
workflows, is in tests/test_workflows.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
BASELINE = ROOT / "tests" / "policy" / "checkov-baseline.txt"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CLOUDS = ("gcp", "aws")

# (check, resource name pattern): what the review found real, never to be accepted
NEVER_ACCEPTED = (
    ("CKV_GCP_12", ".*"),  # GKE network policy enforcement
    ("CKV_GCP_26", ".*"),  # VPC flow logs on GCP subnets
    ("CKV_GCP_61", ".*"),  # GKE intranode visibility (flow logs see pod traffic)
    ("CKV2_AWS_11", ".*"),  # VPC flow logs on AWS
    ("CKV_AWS_37", ".*"),  # EKS control-plane logs, every type
    ("CKV_GCP_39", ".*"),  # Shielded VM (secure boot) on GCP nodes
    ("CKV_GCP_62", r".*state.*"),  # access logs of the state buckets
    ("CKV_AWS_18", r".*state.*"),
    ("CKV_GCP_78", r".*(datasets|checkpoints|state).*"),  # versioned data and state buckets
    ("CKV_AWS_21", r".*(datasets|checkpoints|state).*"),
)


def _findings(cloud: str) -> set[tuple[str, str, str]]:
    done = subprocess.run(
        [str(CHECKOV), "-d", str(GOLDEN / cloud), "--framework", "terraform_json", "-o", "json", "--quiet", "--compact",
         "--skip-download"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: there are failed checks
    reports = json.loads(done.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    return {
        (f["check_id"], f"{cloud}/{f['file_path'].lstrip('/')}", f["resource"])
        for report in reports if report.get("check_type") == "terraform_json"
        for f in report["results"]["failed_checks"]
    }


def _baseline() -> dict[tuple[str, str, str], str]:
    accepted = {}
    for number, line in enumerate(BASELINE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(None, 3)
        assert len(fields) == 4 and len(fields[3]) > 20, f"{BASELINE.name}:{number}: check, file, resource and the reason: {line!r}"
        accepted[tuple(fields[:3])] = fields[3]
    return accepted


@pytest.fixture(scope="module")
def findings() -> set[tuple[str, str, str]]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: scripts/test installs checkov {(ROOT / 'tests/policy/checkov-version').read_text().strip()} there")
    version = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, timeout=120).stdout.strip()
    assert version == (ROOT / "tests/policy/checkov-version").read_text().strip(), f"checkov {version}: run scripts/test"
    return set().union(*(_findings(cloud) for cloud in CLOUDS))


@pytest.mark.slow
def test_checkov_finds_nothing_outside_the_baseline(findings):
    accepted = _baseline()
    new = sorted(findings - accepted.keys())
    assert not new, "new checkov findings: fix them, or add each to the baseline with its reason:\n" + "\n".join(
        f"{check}  {file}  {resource}  REASON" for check, file, resource in new)
    gone = sorted(accepted.keys() - findings)
    assert not gone, "baseline lines that match no finding any more: remove them:\n" + "\n".join("  ".join(g) for g in gone)


def _locked(file: str, resource: str) -> bool:
    """A GCS bucket under a retention policy (storage.object[].lock_days): GCS does not combine
    it with versioning, and it protects more (nothing is overwritten or deleted at all)."""
    document = json.loads((GOLDEN / file).read_text())
    bucket = document.get("resource", {}).get("google_storage_bucket", {}).get(resource.removeprefix("resource."), {})
    return bool(bucket.get("retention_policy", {}).get("retention_period"))


def test_the_baseline_accepts_none_of_the_real_findings():
    for check, file, resource in _baseline():
        if check == "CKV_GCP_78" and _locked(file, resource):
            continue
        for never, pattern in NEVER_ACCEPTED:
            assert not (check == never and re.fullmatch(pattern, resource)), f"{check} {file} {resource}: a real finding, never accepted"
