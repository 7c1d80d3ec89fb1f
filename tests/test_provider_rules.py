"""Cloud stacks checked against their pinned providers' rules, with no provider download.

The facts (constructs/rpi/{gcp,aws}/provider_facts.json) are extracted by scripts/gen-provider-facts
from the providers' own source (Google, at the tag of the pinned version) and from the pinned
cdktf package generated from the provider's schema (AWS). Here: the checker passes over every
golden stack, it finds each of the four defects of issue 18 when it is put back (mutation tests),
and the facts are not stale against the versions the constructs pin.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import GOLDEN, ROOT
from rpi import provider_rules
from rpi.provider_rules import check, facts, unknown_attributes

CLOUD_GOLDEN = sorted(p for p in GOLDEN.rglob("*.tf.json") if p.parent.name in ("gcp", "aws", "transfer"))


@pytest.fixture(scope="module")
def provider_facts():
    """scripts/provider_facts.py, the generator, as a module."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import provider_facts
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return provider_facts


def golden(relative: str) -> dict:
    return json.loads((GOLDEN / relative).read_text())


def site_of(stack: dict) -> str:
    """The golden stacks keep their state under SITE/STACK (the default state.directory)."""
    (config,) = stack["terraform"]["backend"].values()
    return (config.get("prefix") or config["key"]).split("/")[-2]


@pytest.mark.parametrize("path", CLOUD_GOLDEN, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_golden_cloud_stack_keeps_its_providers_rules(path):
    stack = json.loads(path.read_text())
    assert provider_rules.provider_of(stack) in ("google", "aws")
    assert [str(f) for f in check(stack, site_of(stack))] == []
    # Every argument written is one the pinned provider has: facts cover what is synthesized.
    assert unknown_attributes(stack) == []


# ---------------------------------------------------------------- the defects, put back


def only(findings, rule):
    assert [f.rule for f in findings] == [rule], [str(f) for f in findings]
    return findings[0]


def test_a_storage_firewall_from_the_filestore_address_is_found_unplannable():
    """Defect 1: source_ranges from the Filestore instance's IP, unknown at the first plan."""
    stack = golden("gcp/cluster-dev.tf.json")
    assert check(stack, "gcp-zurich") == []
    (name,) = [n for n in stack["resource"]["google_compute_firewall"] if "storage" in n]
    firewall = stack["resource"]["google_compute_firewall"][name]
    (volume,) = stack["resource"]["google_filestore_instance"]
    firewall["source_ranges"] = [f"${{google_filestore_instance.{volume}.networks[0].ip_addresses[0]}}/32"]
    finding = only(check(stack, "gcp-zurich"), "unknown-at-plan")
    assert finding.address == f"google_compute_firewall.{name}"
    assert "one of source_tags, source_ranges, or source_service_accounts must be defined" in finding.message
    assert f"google_filestore_instance.{volume}.networks.ip_addresses" in finding.message
    assert re.fullmatch(r"google/services/compute/resource_compute_firewall\.go:\d+", finding.source)


def test_a_value_known_at_plan_passes_the_same_plan_check():
    stack = golden("gcp/cluster-dev.tf.json")
    (name,) = [n for n in stack["resource"]["google_compute_firewall"] if "storage" in n]
    firewall = stack["resource"]["google_compute_firewall"][name]
    # A subnetwork's range is an argument: known at plan even through a reference.
    (subnet,) = stack["resource"]["google_compute_subnetwork"]
    firewall["source_ranges"] = [f"${{google_compute_subnetwork.{subnet}.ip_cidr_range}}"]
    assert check(stack, "gcp-zurich") == []
    firewall["source_ranges"] = [f"${{google_compute_subnetwork.{subnet}.gateway_address}}/32"]  # computed
    only(check(stack, "gcp-zurich"), "unknown-at-plan")


def test_an_iam_group_without_the_site_is_found_colliding():
    """Defect 2: IAM names are global to the account; a move between two sites collides."""
    stack = golden("aws/cluster-gpu-ai.tf.json")
    groups = stack["resource"]["aws_iam_group"]
    name = next(iter(groups))
    assert "aws-frankfurt" in groups[name]["name"]
    groups[name]["name"] = groups[name]["name"].replace("aws-frankfurt-", "")
    finding = only(check(stack, "aws-frankfurt"), "global-name")
    assert finding.address == f"aws_iam_group.{name}"
    assert "aws-frankfurt" in finding.message and "account" in finding.message


def test_a_bucket_or_a_service_account_without_the_site_is_found_colliding():
    stack = golden("gcp/cluster-gpu-ai.tf.json")
    bucket = next(iter(stack["resource"]["google_storage_bucket"].values()))
    bucket["name"] = "checkpoints"
    account = next(iter(stack["resource"]["google_service_account"].values()))
    account["account_id"] = "vc-gpu-ai"
    assert sorted(f.rule for f in check(stack, "gcp-netherlands")) == ["global-name", "global-name"]


def test_an_adopted_bucket_keeps_the_name_it_has():
    stack = golden("gcp/cluster-gpu-ai.tf.json")
    name, bucket = next(iter(stack["resource"]["google_storage_bucket"].items()))
    bucket["name"] = "kept-checkpoints"
    assert [f.rule for f in check(stack, "gcp-netherlands")] == ["global-name"]
    stack["import"] = [{"to": f"google_storage_bucket.{name}", "id": "kept-checkpoints"}]
    assert check(stack, "gcp-netherlands") == []


def test_a_role_policy_is_named_within_its_role():
    stack = golden("aws/cluster-dev.tf.json")
    policy = next(iter(stack["resource"]["aws_iam_role_policy"].values()))
    policy["name"] = "nodes"
    assert check(stack, "aws-frankfurt") == []


def test_a_private_services_connection_without_abandon_is_found_undestroyable():
    """Defect 3: the connection's delete fails while producer services still use it."""
    stack = golden("gcp/landing-zone-gcp-zurich.tf.json")
    (connection,) = stack["resource"]["google_service_networking_connection"].values()
    assert connection.pop("deletion_policy") == "ABANDON"
    finding = only(check(stack, "gcp-zurich"), "destroy-refused")
    assert 'deletion_policy = "ABANDON"' in finding.message
    assert finding.source.startswith("google/services/servicenetworking/resource_service_networking_connection.go:")


def test_a_node_with_bundled_local_ssd_and_scratch_disk_not_ignored_is_found_replaced_every_plan():
    """Defect 4: scratch_disk is ForceNew, not Computed, and read back from the bundled SSDs."""
    stack = golden("gcp/cluster-icon.tf.json")
    assert check(stack, "gcp-netherlands") == []
    bundled = {n: r for n, r in stack["resource"]["google_compute_instance"].items()
               if "scratch_disk" in r["lifecycle"]["ignore_changes"]}
    assert bundled, "icon runs on a2-ultragpu, whose local SSDs are bundled"
    for instance in bundled.values():
        instance["lifecycle"]["ignore_changes"].remove("scratch_disk")
    findings = check(stack, "gcp-netherlands")
    assert {f.rule for f in findings} == {"read-back"}
    assert {f.address for f in findings} == {f"google_compute_instance.{n}" for n in bundled}
    assert "resource_compute_instance.go" in findings[0].source and "read at" in findings[0].source


def test_a_node_whose_ssd_is_attached_needs_no_ignore():
    stack = golden("gcp/cluster-dev.tf.json")
    for instance in stack["resource"]["google_compute_instance"].values():
        assert "scratch_disk" not in instance["lifecycle"]["ignore_changes"]
    assert check(stack, "gcp-zurich") == []


def test_conflicting_arguments_are_found():
    stack = golden("gcp/cluster-dev.tf.json")
    firewall = next(iter(stack["resource"]["google_compute_firewall"].values()))
    firewall["source_tags"] = ["login"]
    firewall["source_service_accounts"] = ["nodes@example.iam.gserviceaccount.com"]
    findings = [f.message for f in check(stack, "gcp-zurich") if f.rule == "conflict"]
    assert any("source_service_accounts and source_tags are both set" in m for m in findings), findings
    assert all("source_service_accounts" in m for m in findings), findings
    # Within a nested block too: a firewall takes exactly one of allow and deny.
    firewall.pop("source_service_accounts")
    firewall["deny"] = [{"protocol": "icmp"}]
    assert any("allow and deny" in f.message for f in check(stack, "gcp-zurich"))


def test_an_argument_the_provider_does_not_have_is_found():
    stack = golden("aws/cluster-dev.tf.json")
    instance = next(iter(stack["resource"]["aws_instance"].values()))
    instance["metadata_options"]["http_hop_limit"] = 2
    assert unknown_attributes(stack) == [f"aws_instance.{next(iter(stack['resource']['aws_instance']))}: metadata_options.http_hop_limit"]


# ---------------------------------------------------------------- the facts themselves


def pinned(provider: str) -> set[str]:
    return {json.loads(p.read_text())["terraform"]["required_providers"][provider]["version"]
            for p in CLOUD_GOLDEN if provider in json.loads(p.read_text())["terraform"]["required_providers"]}


def package_provider_version(package: str, provider: str) -> str:
    """The provider version a cdktf prebuilt package was generated from (its docs' links)."""
    root = Path(importlib.util.find_spec(package).origin).parent
    tgz = next(root.joinpath("_jsii").glob("*.jsii.tgz"))
    with tarfile.open(tgz) as archive:
        assembly = archive.extractfile("package/.jsii").read().decode()
    return {m for m in re.findall(rf"providers/hashicorp/{provider}/(\d+\.\d+\.\d+)/docs", assembly)}.pop()


@pytest.mark.parametrize("provider,platform,package", [
    ("google", "gcp", "cdktf_cdktf_provider_google"), ("aws", "aws", "cdktf_cdktf_provider_aws")])
def test_the_facts_are_of_the_pinned_provider_versions(provider, platform, package):
    data = facts(platform)
    assert pinned(provider) == {data["version"]}, "the stacks pin another version: run scripts/gen-provider-facts"
    assert package_provider_version(package, provider) == data["version"]
    if provider == "google":
        assert data["source"]["tag"] == f"v{data['version']}" and len(data["source"]["commit"]) == 40
    used = {kind for p in CLOUD_GOLDEN for kind in json.loads(p.read_text()).get("resource", {})
            if kind.startswith(provider + "_")}
    made = set(provider_rules.constructed_types(provider))
    assert used <= made and made == set(data["resources"]), "stale: run scripts/gen-provider-facts"


def test_every_google_fact_names_its_source_line():
    data = facts("gcp")
    for kind, resource in data["resources"].items():
        assert resource["file"].startswith("google/") and resource["file"].endswith(".go"), kind
        for name, fact in resource["attributes"].items():
            assert isinstance(fact["line"], int) and fact["line"] > 0, (kind, name)
        for plan_check in resource.get("plan_checks", []):
            assert plan_check["file"].endswith(".go") and plan_check["line"] > 0
    firewall = data["resources"]["google_compute_firewall"]
    assert firewall["attributes"]["source_ranges"].get("computed") is None
    assert firewall["identity"]["scope"] == "project"
    instance = data["resources"]["google_compute_instance"]["attributes"]["scratch_disk"]
    assert instance["force_new"] and not instance.get("computed")


def test_the_aws_facts_regenerate_from_the_pinned_package_unchanged(provider_facts):
    text = provider_facts.render(provider_facts.aws_facts())
    assert text == (ROOT / "constructs/rpi/aws/provider_facts.json").read_text(), \
        "stale: run scripts/gen-provider-facts"


def test_synthesis_refuses_a_stack_its_provider_would_refuse_and_says_why():
    """reconciler.synth runs the checker on every cloud stack it makes, before any plan."""
    from types import SimpleNamespace

    from reconciler.synth import NotSynthesizable, _keep_provider_rules

    stack = golden("gcp/landing-zone-gcp-zurich.tf.json")
    unit = SimpleNamespace(title="site gcp-zurich", inputs=("sites/gcp-zurich.yaml",),
                           spec=SimpleNamespace(site="gcp-zurich"))
    _keep_provider_rules(unit, stack)  # as synthesized: nothing to say
    next(iter(stack["resource"]["google_service_networking_connection"].values())).pop("deletion_policy")
    with pytest.raises(NotSynthesizable) as refused:
        _keep_provider_rules(unit, stack)
    message = str(refused.value)
    assert message.startswith("site gcp-zurich (sites/gcp-zurich.yaml): the stack breaks 1 rule(s)")
    assert "nothing was planned" in message and "google_service_networking_connection." in message


# ---------------------------------------------------------------- the extractor, on Go it can read here

FAKE_PROVIDER = {
    "google/provider/provider_mmv1_resources.go": '''package provider

var handwrittenDatasources = map[string]*schema.Resource{
	"google_widget": widget.DataSourceWidget(),
}

var generatedResources = map[string]*schema.Resource{
	"google_widget":            widget.ResourceWidget(),
	"google_widget_iam_member": tpgiamresource.ResourceIamMember(widget.WidgetIamSchema, widget.NewUpdater, widget.Parse),
}
''',
    "google/tpgiamresource/resource_iam_member.go": '''package tpgiamresource

var IamMemberBaseSchema = map[string]*schema.Schema{
	"role":   {Type: schema.TypeString, Required: true, ForceNew: true},
	"member": {Type: schema.TypeString, Required: true, ForceNew: true},
}
''',
    "google/services/widget/resource_widget.go": '''package widget

// A widget, with a "brace { in a string" and a `raw } string`.
func ResourceWidget() *schema.Resource {
	return &schema.Resource{
		Create: resourceWidgetCreate,
		Read:   resourceWidgetRead,
		Delete: resourceWidgetDelete,
		CustomizeDiff: customdiff.All(
			widgetSourcesDiff,
			tpgresource.DefaultProviderProject,
		),

		Schema: map[string]*schema.Schema{
			"name": {
				Type:     schema.TypeString,
				Required: true,
				ForceNew: true,
			},
			"sources": {
				Type:          schema.TypeList,
				Optional:      true,
				ConflictsWith: []string{"tags"},
			},
			"tags": {
				Type:     schema.TypeList,
				Optional: true,
			},
			"part": {
				Type:     schema.TypeList,
				Optional: true,
				ForceNew: true,
				Elem:     widgetPartSchema(),
			},
			"deletion_policy": {Type: schema.TypeString, Optional: true},
		},
	}
}

func widgetPartSchema() *schema.Resource {
	return &schema.Resource{
		Schema: map[string]*schema.Schema{
			"address": {
				Type:     schema.TypeString,
				Computed: true,
			},
		},
	}
}

func widgetSourcesDiff(_ context.Context, diff *schema.ResourceDiff, v interface{}) error {
	_, ok := diff.GetOk("sources")
	if !ok {
		return fmt.Errorf("sources must be set")
	}
	return nil
}

func resourceWidgetCreate(d *schema.ResourceData, meta interface{}) error {
	id, err := tpgresource.ReplaceVars(d, config, "projects/{{project}}/global/widgets/{{name}}")
	d.SetId(id)
	return err
}

func resourceWidgetRead(d *schema.ResourceData, meta interface{}) error {
	if err := d.Set("part", parts); err != nil {
		return err
	}
	return nil
}

func resourceWidgetDelete(d *schema.ResourceData, meta interface{}) error {
	if deletionPolicy := d.Get("deletion_policy"); deletionPolicy == "ABANDON" {
		return nil
	}
	return nil
}

var WidgetIamSchema = map[string]*schema.Schema{
	"widget": {Type: schema.TypeString, Required: true, ForceNew: true},
}
''',
}


def test_the_extractor_reads_a_providers_go_source_at_its_tag(tmp_path, provider_facts):
    """The Google extractor on a repository made here, in the provider's layout, at a tag: what
    gen-provider-facts does on a snapshot of terraform-provider-google (not here in CI)."""
    repo = tmp_path / "provider"
    for path, text in FAKE_PROVIDER.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1.2.3"], check=True)
    (repo / "google/services/widget/resource_widget.go").write_text("package widget\n")  # after the tag
    subprocess.run([*git, "commit", "-qam", "later"], check=True)

    def line(text: str) -> int:  # where text is in the widget's file
        source = FAKE_PROVIDER["google/services/widget/resource_widget.go"]
        return source[:source.index(text)].count("\n") + 1

    made = provider_facts.google_facts(repo / ".git", "1.2.3", ["google_widget", "google_widget_iam_member"])
    assert made["source"]["tag"] == "v1.2.3" and len(made["source"]["commit"]) == 40
    widget = made["resources"]["google_widget"]
    path = "google/services/widget/resource_widget.go"
    assert widget["file"] == path and widget["line"] == line("func ResourceWidget")
    attrs = widget["attributes"]
    assert attrs["name"] == {"line": line('"name": {'), "required": True, "force_new": True, "type": "string"}
    assert attrs["sources"]["conflicts_with"] == ["tags"]
    assert attrs["part"]["force_new"] and "computed" not in attrs["part"]
    assert attrs["part.address"] == {"line": line('"address": {'), "computed": True, "type": "string"}
    assert widget["plan_checks"] == [{"function": "widgetSourcesDiff", "file": path, "line": line("func widgetSourcesDiff"),
                                      "reads": ["sources"], "error": "sources must be set"}]
    assert widget["read_sets"] == {"part": line('d.Set("part"')}
    assert widget["identity"]["scope"] == "project" and widget["identity"]["names"] == ["name"]
    assert widget["abandon"]["attribute"] == "deletion_policy" and widget["abandon"]["line"] == line('d.Get("deletion_policy")')
    member = made["resources"]["google_widget_iam_member"]
    assert set(member["attributes"]) == {"role", "member", "widget"}
    with pytest.raises(LookupError, match="google_gadget: no such resource"):
        provider_facts.google_facts(repo / ".git", "1.2.3", ["google_gadget"])


# ---------------------------------------------------------------- the defects in other forms (review)


def test_the_defects_are_found_in_other_forms_too():
    # defect 1 through a list argument of another resource, through a local, and through a block
    stack = golden("gcp/cluster-dev.tf.json")
    (name,) = [n for n in stack["resource"]["google_compute_firewall"] if "storage" in n]
    firewall = stack["resource"]["google_compute_firewall"][name]
    (volume,) = stack["resource"]["google_filestore_instance"]
    filestore = stack["resource"]["google_filestore_instance"][volume]
    filestore["networks"][0]["reserved_ip_range"] = f"${{google_filestore_instance.{volume}.networks[0].ip_addresses[0]}}/29"
    firewall["source_ranges"] = [f"${{google_filestore_instance.{volume}.networks[0].reserved_ip_range}}"]
    only(check(stack, "gcp-zurich"), "unknown-at-plan")
    stack["locals"] = {"fs": f"${{google_filestore_instance.{volume}.networks[0].ip_addresses[0]}}"}
    firewall["source_ranges"] = ["${local.fs}/32"]
    only(check(stack, "gcp-zurich"), "unknown-at-plan")
    firewall["source_ranges"] = [f"${{one(google_filestore_instance.{volume}.networks).ip_addresses[0]}}/32"]
    only(check(stack, "gcp-zurich"), "unknown-at-plan")
    # ... and an ingress firewall with no source at all; an egress one needs none
    firewall.pop("source_ranges")
    assert "none of them is set" in only(check(stack, "gcp-zurich"), "unknown-at-plan").message
    firewall["direction"] = "EGRESS"
    firewall["destination_ranges"] = ["10.0.0.0/8"]
    assert check(stack, "gcp-zurich") == []

    # defect 2 with an interpolated name, and with the site only as part of another word
    stack = golden("aws/cluster-dev.tf.json")
    role_name, role = next(iter(stack["resource"]["aws_iam_role"].items()))
    for name in ("dev-${terraform.workspace}", "xaws-frankfurtx-dev"):
        role["name"] = name
        findings = check(stack, "aws-frankfurt")
        assert {f.rule for f in findings} == {"global-name"}
        assert f"aws_iam_role.{role_name}" in {f.address for f in findings}

    # defect 4 with one disk ignored, or the machine type as a URL
    stack = golden("gcp/cluster-icon.tf.json")
    name, instance = next((n, r) for n, r in stack["resource"]["google_compute_instance"].items()
                          if "scratch_disk" in r["lifecycle"]["ignore_changes"])
    instance["lifecycle"]["ignore_changes"] = [i if i != "scratch_disk" else "scratch_disk[0]"
                                               for i in instance["lifecycle"]["ignore_changes"]]
    instance["machine_type"] = f"zones/europe-west4-a/machineTypes/{instance['machine_type']}"
    assert f"google_compute_instance.{name}" in {f.address for f in check(stack, "gcp-netherlands") if f.rule == "read-back"}


def test_a_check_the_provider_would_not_fail_is_not_reported():
    """The firewall's logging check fails only on log_config with enable_logging false: an
    unknown enable_logging is no error, so it is no plan check."""
    checks = facts("gcp")["resources"]["google_compute_firewall"]["plan_checks"]
    assert [c["function"] for c in checks] == ["resourceComputeFirewallSourceFieldsCustomizeDiff"]
    assert checks[0]["unless"] == {"direction": "EGRESS"}
    stack = golden("gcp/cluster-dev.tf.json")
    firewall = next(iter(stack["resource"]["google_compute_firewall"].values()))
    (volume,) = stack["resource"]["google_filestore_instance"]
    firewall["enable_logging"] = f"${{google_filestore_instance.{volume}.etag == \"\"}}"
    assert check(stack, "gcp-zurich") == []


def test_a_transfer_job_with_two_sources_is_found():
    """ExactlyOneOf held in a Go variable (transferSpecDataSourceKeys) is read too."""
    stack = golden("transfer/gcp-transfer-dev.tf.json")
    assert check(stack, "gcp-zurich") == []
    job = next(iter(stack["resource"]["google_storage_transfer_job"].values()))
    job["transfer_spec"]["posix_data_source"] = {"root_directory": "/data"}
    finding = only(check(stack, "gcp-zurich"), "conflict")
    assert "gcs_data_source" in finding.message and "posix_data_source" in finding.message
    del job["transfer_spec"]["posix_data_source"], job["transfer_spec"]["gcs_data_source"]
    assert "none of" in only(check(stack, "gcp-zurich"), "conflict").message


def test_a_resource_type_without_facts_is_reported():
    stack = golden("aws/cluster-dev.tf.json")
    stack["resource"]["aws_iam_user"] = {"admin": {"name": "admin"}}
    assert only(check(stack, "aws-frankfurt"), "no-facts").address == "aws_iam_user.*"
