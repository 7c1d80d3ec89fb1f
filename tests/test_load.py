"""Bad input: every problem located as file:line:column with its field, reported together, exit 1."""

from __future__ import annotations

import pytest

from reconciler.errors import InvalidDefinitions
from reconciler.gitsource import GitSource
from reconciler.load import load


def problems(repo) -> list[str]:
    with pytest.raises(InvalidDefinitions) as info:
        load(GitSource(repo.path).working_tree())
    return [str(p) for p in info.value.problems]


def test_examples_load(repo):
    defs = load(GitSource(repo.path).working_tree())
    assert set(defs.sites) == {"local-a", "local-b", "gcp-zurich", "gcp-netherlands", "aws-zurich", "aws-frankfurt"}
    assert {"dev", "gpu-ai", "slurm-hpc", "icon"} <= set(defs.clusters)
    icon = defs.clusters["icon"].node_pools["compute"]
    assert (icon.count, icon.cores, icon.memory_gb, icon.gpu.count, icon.gpu.model) == (1, 48, 1360, 8, "nvidia-a100-80gb")
    assert icon.local_ssd_gb > 0


def test_profiles_compose_in_order(repo):
    defs = load(GitSource(repo.path).working_tree())
    icon = defs.clusters["icon"]
    # from profiles/base.yaml, untouched by the cluster file
    assert icon.node_pools["login"].cores == 4
    # profiles/slurm.yaml's settings, extended by the cluster's own
    settings = icon.services.scheduler.settings
    assert settings["SelectType"] == "select/cons_tres" and settings["GresTypes"] == "gpu"
    assert defs.cluster_files["icon"] == ("clusters/icon.yaml", "clusters/profiles/base.yaml", "clusters/profiles/slurm.yaml")


def test_malformed_yaml(repo):
    repo.write("sites/broken.yaml", "name: broken\nplatform: [local\n")
    (found,) = problems(repo)
    assert found.startswith("sites/broken.yaml:3:1: error: malformed YAML")


def test_unknown_key_names_line_and_suggests(repo):
    repo.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: 8\n    coress: 9\n")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:14:5: error: node_pools.compute.coress: unknown field 'coress'")
    assert "did you mean 'cores'?" in found


def test_wrong_type(repo):
    repo.replace("clusters/slurm-hpc.yaml", "count: 4", "count: many")
    (found,) = problems(repo)
    assert found == "clusters/slurm-hpc.yaml:12:12: error: node_pools.compute.count: Input should be a valid integer, got 'many'"


def test_numbers_are_not_coerced_from_strings(repo):
    repo.replace("clusters/slurm-hpc.yaml", "count: 4", 'count: "4"')
    (found,) = problems(repo)
    assert "node_pools.compute.count" in found and "got '4'" in found


def test_unknown_site_lists_the_valid_ones(repo):
    repo.replace("clusters/icon.yaml", "site: gcp-netherlands", "site: gcp-netherland")
    (found,) = problems(repo)
    assert found.startswith("clusters/icon.yaml:7:9: error: placement.site: unknown site 'gcp-netherland'")
    sites = "aws-frankfurt, aws-zurich, gcp-netherlands, gcp-zurich, local-a, local-b"
    assert f"sites: {sites}; did you mean 'gcp-netherlands'?" in found


def test_unknown_failover_site(repo):
    repo.replace("clusters/dev.yaml", "failover: [local-b]", "failover: [local-c]")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:7:12: error: failover[0]: unknown site 'local-c'")


def test_two_clusters_with_one_name(repo):
    repo.write("clusters/dev.yml", repo.read("clusters/dev.yaml"))
    found = problems(repo)
    assert found == [
        "clusters/dev.yaml:2:7: error: name: cluster name 'dev' is defined twice (also in clusters/dev.yml:2:7; names must be unique)",
        "clusters/dev.yml:2:7: error: name: cluster name 'dev' is defined twice (also in clusters/dev.yaml:2:7; names must be unique)",
    ]


def test_a_name_that_is_not_its_file_name(repo):
    repo.replace("clusters/gpu-ai.yaml", "name: gpu-ai", "name: dev")
    found = problems(repo)
    assert "clusters/gpu-ai.yaml:2:7: error: name: name 'dev' differs from the file name 'gpu-ai.yaml' (rename the file to dev.yaml or set name: gpu-ai)" in found


def test_errors_in_a_profile_point_at_the_profile(repo):
    repo.replace("clusters/profiles/base.yaml", "    memory_gb: 16", "    memory_gb: lots")
    found = problems(repo)
    assert found == ["clusters/profiles/base.yaml:9:16: error: node_pools.login.memory_gb: Input should be a valid integer, got 'lots'"]


def test_profile_cannot_place_a_cluster(repo):
    repo.write("clusters/profiles/base.yaml", repo.read("clusters/profiles/base.yaml") + "placement:\n  site: local-a\n")
    (found,) = problems(repo)
    assert "clusters/profiles/base.yaml:16:1: error: placement: a profile cannot set this field" in found


def test_unknown_profile(repo):
    repo.replace("clusters/dev.yaml", "profiles: [base]", "profiles: [bsae]")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:4:12: error: profiles[0]: unknown profile 'bsae'")
    assert "did you mean 'base'?" in found


def test_invalid_enum_value_lists_choices(repo):
    repo.replace("sites/local-b.yaml", "platform: local", "platform: azure")
    (found,) = problems(repo)
    assert found == "sites/local-b.yaml:4:11: error: platform: Input should be 'local', 'gcp' or 'aws', got 'azure'"


def test_missing_required_field(repo):
    repo.replace("clusters/dev.yaml", "flavor: minimal\n", "")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:1:1: error: flavor: missing required field")


def test_semantic_checks(repo):
    repo.replace("sites/local-b.yaml", "services_subnet: 10.20.0.0/24", "services_subnet: 10.99.0.0/24")
    repo.replace("clusters/gpu-ai.yaml", "    gpu:\n      model: nvidia-a100-80gb\n      count: 8\n", "")
    found = problems(repo)
    assert any(f.startswith("sites/local-b.yaml:11:3: error: network: services_subnet 10.99.0.0/24 is not inside cidr") for f in found)
    assert any(f.startswith("clusters/gpu-ai.yaml:10:3: error: node_pools: flavor gpu needs at least one node pool with gpu") for f in found), found


def test_all_problems_of_a_run_are_reported_together(repo):
    repo.write("sites/broken.yaml", "name: [\n")
    repo.replace("clusters/dev.yaml", "    cores: 8\n", "    cores: eight\n")
    repo.replace("clusters/icon.yaml", "site: gcp-netherlands", "site: nowhere")
    repo.replace("clusters/gpu-ai.yaml", "name: gpu-ai", "name: slurm-hpc")
    found = problems(repo)
    files = sorted({f.split(":")[0] for f in found})
    assert files == ["clusters/dev.yaml", "clusters/gpu-ai.yaml", "clusters/icon.yaml", "clusters/slurm-hpc.yaml", "sites/broken.yaml"]


def test_failover_to_where_it_runs_points_at_the_failover_list(repo):
    repo.replace("clusters/dev.yaml", "failover: [local-b]", "failover: [local-b, local-a]")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:7:11: error: failover: failover lists the placement site local-a")


def test_patterns_are_said_in_words_not_as_regular_expressions(repo):
    repo.replace("clusters/dev.yaml", "    size_gb: 500\n", "    size_gb: 500\n    from: ../x\n")
    (found,) = problems(repo)
    assert found == (
        "clusters/dev.yaml:18:11: error: storage.shared.from: should be a volume id, as `reconcile volumes` lists it, "
        "or the cloud's resource id, got '../x'"
    )


@pytest.mark.parametrize(
    "site, block, expected",
    [
        ("local-a", "  object_store:\n    backend: gcs\n", "services.object_store: a gcs store on Google's own endpoint needs project"),
        ("local-a", "  object_store:\n    backend: s3\n    endpoint: http://rgw.example:7480/'x\n", "services.object_store.endpoint: endpoint must be a URL"),
        ("local-a", "  object_store:\n    backend: gcs\n    project: '42'\n    region: eu\n", "services.object_store: region is for an s3 store"),
        ("gcp-zurich", "  object_store:\n    backend: s3\n    endpoint: http://rgw.example:7480\n", "services: object_store is for the local platform: a gcp site's buckets are its cloud's own"),
    ],
)
def test_an_object_store_is_checked(repo, site, block, expected):
    repo.replace(f"sites/{site}.yaml", "\nservices:\n", "\nservices:\n" + block)
    (found,) = problems(repo)
    assert found.startswith(f"sites/{site}.yaml:") and expected in found, found


def test_the_readmes_site_examples_validate_beside_the_example_sites(repo):
    """Every site in the README's examples (YAML blocks that name the site schema) loads beside
    this repository's own sites: fields, and an address space apart from theirs."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "schema/site.schema.json" in b]
    assert blocks
    for block in blocks:
        name = re.search(r"^name: (\S+)", block, re.M).group(1)
        repo.write(f"sites/{name}.yaml", block)
    load(GitSource(repo.path).working_tree())  # raises on any problem


# ---------------------------------------------------------------- bounded reading

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)  # 9**10 values once expanded, from a few hundred bytes


def measured_validate(repo) -> tuple[int, str, int]:
    """`reconcile validate` in a process of its own: (exit code, stderr, peak KiB)."""
    import subprocess
    import sys
    from pathlib import Path

    wrapper = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.stderr.write(done.stdout + done.stderr)"
    )
    reconcile = str(Path(sys.executable).with_name("reconcile"))
    done = subprocess.run([sys.executable, "-c", wrapper, reconcile, "validate", "--repo", str(repo.path)],
                          capture_output=True, text=True, timeout=60)
    code, peak = done.stdout.split()
    return int(code), done.stderr, int(peak)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("big", "name: big\n" + "# padding\n" * 2_100_000, "bytes, more than the limit of 1,048,576 for a definition file"),
        ("bomb", BOMB, "more than 5,000 values once its aliases are expanded (the limit)"),
        ("wide", "name: wide\nx: [" + "1," * 520_000 + "1]\n", "more than 5,000 values (the limit)"),
        ("strings", "name: strings\nx: [&s " + "x" * 65_000 + ", " + ", ".join(["*s"] * 4_000) + "]\n",
         "more than 2,097,152 characters of strings once its aliases are expanded (the limit)"),
    ],
)
def test_a_huge_or_exploding_file_is_refused_fast_and_small(repo, name, text, expected):
    """A 20 MB file and an alias bomb of a few hundred bytes: each one error, naming the file
    and the limit, within 200 MB, before anything is built from it (scripts/bench times them)."""
    repo.write(f"clusters/{name}.yaml", text)
    code, err, peak_kib = measured_validate(repo)
    assert code == 1 and f"clusters/{name}.yaml" in err and expected in err, err
    assert "Traceback" not in err
    assert peak_kib < 200 * 1024, f"{peak_kib / 1024:.0f} MB"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: deep\nx: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
        ("name: looped\nx: &x [*x]\n", "nested deeper than 32 levels"),
        ("name: long\ndescription: " + "y" * 70_000 + "\n", "a string of 70,000 characters, more than the limit of 65,536"),
    ],
)
def test_depth_recursion_and_string_length_are_bounded(repo, text, expected):
    repo.write("clusters/hostile.yaml", text)
    (found,) = problems(repo)
    assert found.startswith("clusters/hostile.yaml:") and expected in found, found


def test_the_number_of_definition_files_is_bounded(repo):
    for i in range(2001):
        (repo.path / "clusters" / "profiles" / f"p{i}.yaml").write_text("node_pools: {}\n")
    (found,) = problems(repo)
    assert "definition files, more than the limit of 2,000; none was read" in found


def test_a_misspelled_choice_says_which_was_meant(repo):
    repo.replace("clusters/dev.yaml", "flavor: minimal", "flavor: minimall")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:") and "flavor" in found and "did you mean 'minimal'?" in found, found


def test_merge_keys_are_read(repo):
    """YAML merge keys (`<<: *defaults`) are plain YAML: the merged fields load, located where
    the mapping is."""
    repo.replace("clusters/dev.yaml", "node_pools:\n  compute:\n    role: compute\n    count: 2\n    cores: 8\n    memory_gb: 32\n",
                 "x-pool: &pool {role: compute, count: 2, cores: 8, memory_gb: 32}\nnode_pools:\n  compute:\n    <<: *pool\n")
    found = problems(repo)
    assert len(found) == 1 and "x-pool" in found[0] and "unknown field" in found[0]  # the anchor's home is not a field
    repo.replace("clusters/dev.yaml", "x-pool: &pool {role: compute, count: 2, cores: 8, memory_gb: 32}\nnode_pools:\n  compute:\n    <<: *pool\n",
                 "node_pools:\n  compute: &pool {role: compute, count: 2, cores: 8, memory_gb: 32}\n  more:\n    <<: *pool\n    count: 1\n")
    defs = load(GitSource(repo.path).working_tree())
    assert defs.clusters["dev"].node_pools["more"].cores == 8 and defs.clusters["dev"].node_pools["more"].count == 1


def test_thousands_of_problems_in_one_file_are_a_screenful(repo):
    repo.replace("clusters/dev.yaml", "flavor: minimal\n", "flavor: minimal\n" + "".join(f"unknown{i}: 1\n" for i in range(2000)))
    found = problems(repo)
    assert len(found) == 51 and any(f.endswith("and 1,950 more problems in this file, not listed") for f in found)


def test_a_link_to_an_endless_file_is_refused_by_the_real_command(repo):
    """The command's early helper reads site files for a hint before anything is validated:
    it follows no link either (a link to /dev/zero would read forever)."""
    import os

    os.symlink("/dev/zero", repo.path / "sites" / "zero.yaml")
    code, err, peak_kib = measured_validate(repo)
    assert code == 1 and "sites/zero.yaml: error: a symbolic link" in err and "Traceback" not in err, err
    assert peak_kib < 200 * 1024


def test_other_files_beside_definitions_are_named_never_read(repo, cli):
    """A README beside the definitions is listed as not read; a dot file is not worth a word."""
    repo.write("clusters/README.md", "# our clusters\n")
    repo.write("sites/.gitkeep", "")
    repo.write("clusters/dev.yaml~", "name: dev\n")  # an editor's backup in the working tree
    code, out, err = cli("validate", "--repo", str(repo.path))
    assert code == 0, err
    assert "not definitions, not read: clusters/README.md, clusters/dev.yaml~" in out, out
    assert ".gitkeep" not in out
    code, out, _ = cli("validate", "--json", "--repo", str(repo.path))
    import json

    assert json.loads(out)["ignored"] == ["clusters/README.md", "clusters/dev.yaml~"]


def test_a_link_committed_to_git_is_refused_not_read_as_its_target_path(repo, cli):
    """At a revision a link is a blob whose text is its target: it is refused as a link."""
    import os

    os.symlink("/etc/passwd", repo.path / "sites" / "passwd.yaml")
    head = repo.commit("a link")
    code, out, err = cli("validate", "--head", head, "--repo", str(repo.path))
    assert code == 1 and "sites/passwd.yaml: error: a symbolic link" in err, err


def test_a_reader_that_leaves_early_is_no_traceback(repo):
    """`reconcile validate | head -1`: the pipe closes, the command ends quietly (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    reader, writer = os.pipe()
    os.close(reader)  # the reader has left before the first line
    try:
        done = subprocess.run([str(Path(sys.executable).with_name("reconcile")), "validate", "--repo", str(repo.path)],
                              stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert done.returncode == 141, done.stderr
    assert done.stderr == "", done.stderr


def test_a_misspelled_required_field_is_one_problem(repo):
    repo.replace("clusters/dev.yaml", "flavor: minimal", "flavr: minimal")
    (found,) = problems(repo)
    assert found.startswith("clusters/dev.yaml:8:1: error: flavr: unknown field 'flavr'") and "did you mean 'flavor'? It is required" in found, found


def test_portability_problems_come_with_schema_problems_in_one_run(repo):
    """A cluster that validates but cannot run on its site is reported even while another file
    has a schema error; its GPU count is pointed at, not its pool."""
    repo.replace("clusters/dev.yaml", "  site: local-a\n", "  site: gcp-netherlands\n")
    repo.replace("clusters/dev.yaml", "failover: [local-b]", "failover: []")
    repo.replace("clusters/dev.yaml", "    memory_gb: 32\n", "    memory_gb: 32\n    gpu:\n      model: nvidia-h100-80gb\n      count: 12\n")
    repo.replace("clusters/slurm-hpc.yaml", "    cores: 64\n", "    coress: 64\n")
    found = problems(repo)
    assert any(f.startswith("clusters/slurm-hpc.yaml:") and "coress" in f for f in found), found
    assert any(f.startswith("clusters/dev.yaml:17:7: error: node_pools.compute.gpu.count: cluster dev cannot run on its placement site gcp-netherlands")
               and "a3-highgpu-8g lacks GPUs (8 < 12)" in f for f in found), found


def test_a_huge_sparse_file_is_never_read_whole(repo):
    """600 MB that take no disk: the size is refused after reading at most the limit and a byte."""
    import os

    with open(repo.path / "sites" / "huge.yaml", "wb") as handle:
        os.ftruncate(handle.fileno(), 600 << 20)
    code, err, peak_kib = measured_validate(repo)
    assert code == 1 and "sites/huge.yaml: error: 629,145,600 bytes, more than the limit of 1,048,576" in err, err
    assert peak_kib < 200 * 1024, f"{peak_kib / 1024:.0f} MB"


def test_the_definitions_together_are_bounded_and_none_is_read_past_it(repo):
    """17 files of 1,000,000 bytes each (under the file limit): 17 MB together, refused unread."""
    for i in range(17):
        (repo.path / "clusters" / "profiles" / f"big{i}.yaml").write_text("# " + "x" * 999_996 + "\n")
    (found,) = problems(repo)
    assert "bytes of definitions, more than the limit of 16,777,216; none was read" in found, found


def test_a_name_mismatch_suggests_only_valid_names_and_shows_a_confusable(repo):
    repo.replace("clusters/dev.yaml", "name: dev\n", "name: d\u0435v\n")  # a Cyrillic e
    found = problems(repo)
    mismatch = next(f for f in found if "differs from the file name" in f)
    assert "'d\\u0435v'" in mismatch and mismatch.endswith("(set name: dev)"), mismatch
    assert any("got 'd\\u0435v'" in f for f in found), found
    repo.replace("clusters/dev.yaml", "name: d\u0435v\n", "name: dev\n")
    (repo.path / "clusters" / "dev.yaml").rename(repo.path / "clusters" / "DEV.yaml")
    (found,) = [f for f in problems(repo) if "differs" in f]
    assert found.endswith("(rename the file to dev.yaml)") and "set name: DEV" not in found, found
