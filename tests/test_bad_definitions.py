"""A table of bad definitions: every row is exit 1, with a location (`file:line:col`, the
field) and what would be valid, no traceback, nothing but printable text (a key cannot forge a
log line), and nothing planned, applied or written to any state. `scripts/bench_hostile.py`
times the slowest kinds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

D, S = "clusters/dev.yaml", "sites/local-b.yaml"


def swap(old: str, new: str, rel: str = D):
    return lambda repo: repo.replace(rel, old, new)


def write(rel: str, text: str):
    return lambda repo: repo.write(rel, text)


def raw(rel: str, data: bytes):
    return lambda repo: (repo.path / rel).write_bytes(data)


def link(rel: str, target: str):
    return lambda repo: os.symlink(target, repo.path / rel)


ROWS = [
    # malformed or hostile YAML
    ("unclosed bracket", write("clusters/x.yaml", "name: x\nfailover: [a\n"), "clusters/x.yaml", "malformed YAML"),
    ("tab indentation", swap("node_pools:\n  compute:", "node_pools:\n\tcompute:"), D, "malformed YAML"),
    ("duplicate key", swap("flavor: minimal\n", "flavor: minimal\nflavor: slurm\n"), D, "duplicate"),
    ("top-level list", write("clusters/x.yaml", "- name: x\n"), "clusters/x.yaml", "expected a mapping"),
    ("empty file", write("clusters/x.yaml", ""), "clusters/x.yaml", "expected a mapping"),
    ("not UTF-8", raw("clusters/x.yaml", b"name: \xff\xfe\n"), "clusters/x.yaml", "not UTF-8"),
    ("python tag", write("clusters/x.yaml", "name: !!python/object/apply:os.system [id]\n"), "clusters/x.yaml", "no tags"),
    ("alias bomb", write("clusters/x.yaml", "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))), "clusters/x.yaml", "aliases are expanded"),
    ("deep nesting", write("clusters/x.yaml", "x: " + "[" * 50 + "]" * 50 + "\n"), "clusters/x.yaml", "nested deeper"),
    ("huge string", write("clusters/x.yaml", "name: x\ndescription: " + "z" * 70_000 + "\n"), "clusters/x.yaml", "characters, more than the limit"),
    ("symlink out", link("sites/passwd.yaml", "/etc/passwd"), "sites/passwd.yaml", "symbolic link"),
    ("bad tagged int", swap("    count: 2\n", "    count: !!int abc\n"), D, "cannot be read"),
    ("impossible date", swap("    count: 2\n", "    count: 2001-02-30\n"), D, "cannot be read"),
    ("huge integer", swap("    count: 2\n", "    count: " + "9" * 5000 + "\n"), D, "cannot be read"),
    ("yaml 1.3", lambda repo: repo.write(D, "%YAML 1.3\n---\n" + repo.read(D)), D, "version"),
    ("log retention", swap("state:\n  backend: local\n", "audit:\n  retention_days: 100\nstate:\n  backend: local\n", S), S, "retention_days 100 is not one CloudWatch Logs takes"),
    ("nul in state path", swap("  path: .reconcile/state/local-b\n", '  path: "a\\x00b"\n', S), S, "control characters"),
    ("file outside", write("clusters/deeper/x.yaml", "name: x\n"), "clusters/deeper/x.yaml", "this file is not read"),
    ("upper-case suffix", write("clusters/x.YAML", "name: x\n"), "clusters/x.YAML", "rename it to clusters/x.yaml"),
    ("json suffix", write("sites/x.json", '{"name": "x"}\n'), "sites/x.json", "rename it to sites/x.yaml"),
    ("nul byte", raw("clusters/x.yaml", b"name: x\n\x00\n"), "clusters/x.yaml", "U+0000"),
    ("boolean key", swap("flavor: minimal\n", "flavor: minimal\ntrue: 1\n"), D, "read as the boolean true (put the key in quotes"),
    ("number key", swap("    count: 2\n", "    count: 2\n    0x1F: 4\n"), D, "read as the number 31 (put the key in quotes, as it is written"),
    ("date key", swap("flavor: minimal\n", "flavor: minimal\n2024-01-01: 1\n"), D, "not a date (put the key in quotes"),
    ("slurm.conf line", swap("flavor: minimal\n", "flavor: minimal\nservices:\n  scheduler:\n    kind: slurm\n    settings: {\"Foo\\nSlurmdUser\": root}\n"), D, "slurm.conf parameter name"),
    ("slurm.conf value", swap("flavor: minimal\n", "flavor: minimal\nservices:\n  scheduler:\n    kind: slurm\n    settings: {Bar: \"x\\nSlurmdUser=root\"}\n"), D, "slurm.conf value on one line"),
    ("mount escape", swap("    size_gb: 500\n", "    size_gb: 500\n    mount: \"../../etc\\n\"\n"), D, "an absolute path"),
    ("escape in region", swap("region: lugano", "region: \"lugano\\e[31m\"", S), S, "a region name"),
    ("fifo", lambda repo: os.mkfifo(repo.path / "sites" / "pipe.yaml"), "sites/pipe.yaml", "not a regular file"),
    ("list key", swap("flavor: minimal\n", "flavor: minimal\n? [a, b]\n: 1\n"), D, "not a list"),
    ("escapes in a key", swap("flavor: minimal\n", 'flavor: minimal\n"x\\e[31m\\nforged": 1\n'), D, "\\x1b[31m\\nforged"),
    # names
    ("slash in name", swap("name: dev\n", "name: a/b\n"), D, "name"),
    ("dots in name", swap("name: dev\n", "name: ..\n"), D, "name"),
    ("upper case", swap("name: dev\n", "name: Dev\n"), D, "name"),
    ("confusable", swap("name: dev\n", "name: d\u0435v\n"), D, "name"),
    ("too long", swap("name: dev\n", "name: " + "d" * 50 + "\n"), D, "name"),
    ("name not file", swap("name: dev\n", "name: other\n"), D, "file name"),
    ("same name twice", write("clusters/dev-copy.yaml", "name: dev\nplacement: {site: local-a}\nflavor: minimal\n"), "clusters/dev-copy.yaml", "dev"),
    ("unknown field", swap("    cores: 8\n", "    coress: 8\n"), D, "did you mean 'cores'"),
    ("missing required", swap("    role: compute\n", ""), D, "role"),
    # references
    ("unknown profile", swap("profiles: [base]", "profiles: [bsae]"), D, "profile"),
    # a profile naming profiles (a cycle, or a chain) is refused: only a cluster file lists them
    ("profile cycle", lambda repo: repo.write("clusters/profiles/base.yaml", repo.read("clusters/profiles/base.yaml") + "profiles: [slurm]\n"),
     "clusters/profiles/base.yaml", "a profile cannot set this field"),
    ("unknown placement", swap("  site: local-a\n", "  site: local-z\n"), D, "unknown site"),
    ("failover unknown", swap("failover: [local-b]", "failover: [local-q]"), D, "unknown site"),
    ("failover placement", swap("failover: [local-b]", "failover: [local-a]"), D, "failover"),
    ("failover twice", swap("failover: [local-b]", "failover: [local-b, local-b]"), D, "local-b is listed twice"),
    ("profile twice", swap("profiles: [base]", "profiles: [base, base]"), D, "base is listed twice"),
    ("zone twice", swap("zones: [rack-1]", "zones: [rack-1, rack-1]", S), S, "rack-1 is listed twice"),
    ("zone with spaces", swap("zones: [rack-1]", "zones: [rack 1]", S), S, "a zone name"),
    ("label key", swap("  operator: cscs\n", '  "op erator": cscs\n', S), S, "a label key"),
    ("label escape", swap("  operator: cscs\n", '  operator: "cs\\ecs"\n', S), S, "without control characters"),
    ("base_dn newline", swap("base_dn: dc=local-b,dc=hpc,dc=example", 'base_dn: "dc=local-b\\ncn=admin"', S), S, "distinguished name"),
    ("site removed", lambda repo: (repo.path / "sites/local-a.yaml").unlink(), D, "unknown site"),
    ("zone not offered", swap("  site: local-a\n", "  site: local-a\n  zone: rack-9\n"), D, "zone"),
    # counts and sizes
    ("negative count", swap("    count: 2\n", "    count: -1\n"), D, "count"),
    ("zero login nodes", swap("node_pools:\n", "node_pools:\n  login:\n    role: login\n    count: 0\n    cores: 2\n    memory_gb: 4\n"), D, "count"),
    ("absurd count", swap("    count: 2\n", "    count: 1000000000\n"), D, "count"),
    ("string count", swap("    count: 2\n", "    count: two\n"), D, "count"),
    ("zero cores", swap("    cores: 8\n", "    cores: 0\n"), D, "cores"),
    ("absurd memory", swap("    memory_gb: 32\n", "    memory_gb: 99999999\n"), D, "memory_gb"),
    ("tiny shared", swap("    size_gb: 500\n", "    size_gb: 1\n"), D, "size_gb"),
    ("absurd shared", swap("    size_gb: 500\n", "    size_gb: 99999999999\n"), D, "size_gb"),
    ("absurd control cores", swap("  control_nodes:\n    count: 1\n", "  control_nodes:\n    count: 1\n    cores: 100000\n", S), S, "cores"),
    ("bad on_move", swap("storage:\n", "storage:\n  on_move: maybe\n"), D, "on_move"),
    # GPUs
    ("gpu without count", swap("    memory_gb: 32\n", "    memory_gb: 32\n    gpu: {model: nvidia-a100-80gb}\n"), D, "gpu"),
    ("gpu without model", swap("    memory_gb: 32\n", "    memory_gb: 32\n    gpu: {count: 2}\n"), D, "gpu"),
    ("unknown gpu", swap("    memory_gb: 32\n", "    memory_gb: 32\n    gpu: {model: nvidia-h100-80g, count: 1}\n"), D, "model"),
    # networks and state
    ("bad cidr", swap("  cidr: 10.20.0.0/16\n", "  cidr: 10.20.0.0/33\n", S), S, "cidr"),
    ("overlapping sites", swap("  cidr: 10.20.0.0/16\n  services_subnet: 10.20.0.0/24\n  clusters_range: 10.20.128.0/17\n",
                               "  cidr: 10.10.0.0/16\n  services_subnet: 10.10.64.0/24\n  clusters_range: 10.10.128.0/17\n", S), S, "overlaps"),
    ("subnet outside", swap("  services_subnet: 10.20.0.0/24\n", "  services_subnet: 10.99.0.0/24\n", S), S, "services_subnet"),
    ("absolute state", swap("  path: .reconcile/state/local-b\n", "  path: /etc\n", S), S, "path"),
    ("state escapes", swap("  path: .reconcile/state/local-b\n", "  path: ../../x\n", S), S, "path"),
    ("endpoint creds", swap("state:\n  backend: local\n  path: .reconcile/state/local-b\n",
                            "state:\n  backend: s3\n  bucket: b-1\n  endpoint: http://key:secret@127.0.0.1:9000\n", S), S, "credentials"),
    ("admit unknown", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hcp}]\nstorage:\n"), D, "network.admit.0.cluster: cluster dev admits slurm-hcp, which no file"),
    ("admit itself", swap("storage:\n", "network:\n  admit: [{cluster: dev}]\nstorage:\n"), D, "admits dev, itself"),
    ("admit twice", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hpc}, {cluster: slurm-hpc}]\nstorage:\n"), D, "slurm-hpc is listed twice"),
    ("admit port word", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hpc, ports: [ssh]}]\nstorage:\n"), D, "'ssh' is not a port"),
    ("admit overlap", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hpc, ports: [\"20-30\", 25]}]\nstorage:\n"), D, "20-30 and 25 overlap"),
    ("admit bad port", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hpc, ports: [\"70000\"]}]\nstorage:\n"), D, "not a port"),
    ("admit range reversed", swap("storage:\n", "network:\n  admit: [{cluster: slurm-hpc, ports: [\"9-3\"]}]\nstorage:\n"), D, "from low to high"),
    ("aws without admins", swap("kubernetes_admins:  # EKS cluster-admin access entries: the CI apply role and a break-glass role\n  - arn:aws:iam::111122223333:role/reconcile-apply\n  - arn:aws:iam::111122223333:role/break-glass\n", "", "sites/aws-zurich.yaml"), "sites/aws-zurich.yaml", "an aws site needs kubernetes_admins"),
    ("admins on local", swap("state:\n  backend: local\n", "kubernetes_admins: [\"arn:aws:iam::111122223333:role/x\"]\nstate:\n  backend: local\n", S), S, "kubernetes_admins: only an aws site takes kubernetes_admins"),
    ("admin not a role", swap("  - arn:aws:iam::111122223333:role/break-glass\n", "  - arn:aws:iam::111122223333:user/alice\n", "sites/aws-zurich.yaml"), "sites/aws-zurich.yaml", "an IAM role's ARN"),
    ("public login on aws", swap("flavor: gpu\n", "flavor: gpu\nnetwork:\n  public_login: true\n  allowed_cidrs: [192.0.2.0/24]\n", "clusters/gpu-ai.yaml"), "clusters/gpu-ai.yaml", "aws-frankfurt (aws eu-central-1): not on aws yet"),
    ("store on cloud", swap("\nservices:\n", "\nservices:\n  object_store: {backend: s3}\n", "sites/aws-zurich.yaml"), "sites/aws-zurich.yaml", "object_store"),
]


def state_digest(repo) -> str:
    digest = hashlib.sha256()
    root = repo.path / ".reconcile"
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if path.is_file() and "state" in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case, damage, where, expected", ROWS, ids=[r[0] for r in ROWS])
def test_a_bad_definition_is_one_clear_error_and_nothing_happens(repo, cli, case, damage, where, expected):
    before = state_digest(repo)
    damage(repo)
    code, out, err = cli("--dry-run", "--repo", str(repo.path))
    text = out + err
    assert code == 1, text
    assert "Traceback" not in text
    assert all(line.isprintable() for line in err.splitlines()), err
    located = [line for line in err.splitlines() if line.startswith(f"{where}:") and ": error: " in line]
    assert located and any(expected in line for line in located), text
    if not where.endswith("passwd.yaml") and case not in ("huge string", "fifo"):
        assert any(line.split(":")[1].isdigit() for line in located), f"no line number: {located}"
    assert state_digest(repo) == before
    assert not (repo.path / ".reconcile" / "stacks").exists()  # nothing was planned
