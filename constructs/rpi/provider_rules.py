"""Check synthesized cloud stacks against their providers' rules, with no provider download.

The rules are data: `rpi/<platform>/provider_facts.json`, extracted by
`scripts/gen-provider-facts` from the pinned providers (each fact names its source file and
line). What the facts cannot say, how a cloud behaves, is in the small tables below, each entry
with the issue or document it comes from. `check(stack, site)` returns one Finding per breach:

- a plan check of the provider's (CustomizeDiff) that reads an argument with GetOk, to which an
  unknown value reads as unset, given only values that are unknown at the first plan;
- a ForceNew argument that the provider reads back differently from what was written, unless
  lifecycle.ignore_changes names it;
- a name global to an account, a project or the world that does not carry the site;
- arguments that conflict (ConflictsWith, ExactlyOneOf);
- a destroy that the cloud refuses, where the provider offers to abandon instead.

Pure functions over JSON: no Node, no provider.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rpi.catalog import catalog

_HERE = Path(__file__).parent
PLATFORM_OF_PROVIDER = {"google": "gcp", "aws": "aws"}

# ForceNew arguments that the provider's Read sets from what the cloud reports, where the cloud
# reports more than was written: (resource type, argument) -> (when, source).
READ_BACK = {
    ("google_compute_instance", "scratch_disk"): (
        lambda r: _bundles_local_ssd(r),
        "machine types with bundled local SSD report them as scratch disks "
        "(hashicorp/terraform-provider-google#19648)"),
}
# Deletes that the cloud refuses while something else still uses the resource.
DELETE_REFUSED = {
    "google_service_networking_connection":
        "the producer services (Filestore, Cloud SQL) keep using the connection after their "
        "instances are deleted (hashicorp/terraform-provider-google#16275, #19908)",
}


@dataclass(frozen=True)
class Finding:
    address: str  # TYPE.NAME
    rule: str  # unknown-at-plan | read-back | global-name | conflict | destroy-refused
    message: str
    source: str  # where the rule comes from: provider file:line, or an issue

    def __str__(self) -> str:
        return f"{self.address}: {self.message} [{self.rule}; {self.source}]"


def constructed_types(provider: str) -> list[str]:
    """The resource types the platform's constructs can make: the provider modules they load."""
    platform = PLATFORM_OF_PROVIDER[provider]
    kinds = set()
    for path in sorted((_HERE / platform).glob("*.py")):
        for module in re.findall(rf'\b{provider}\("([a-z0-9_]+)"\)', path.read_text()):
            if not module.startswith("data_"):
                kinds.add(f"{provider}_{module}")
    return sorted(kinds)


@cache
def facts(platform: str) -> dict:
    return json.loads((_HERE / platform / "provider_facts.json").read_text())


def provider_of(stack: dict) -> str | None:
    required = stack.get("terraform", {}).get("required_providers", {})
    return next((p for p in required if p in PLATFORM_OF_PROVIDER), None)


def check(stack: dict, site: str) -> list[Finding]:
    """The findings of one synthesized stack of `site`."""
    provider = provider_of(stack)
    if provider is None:
        return []
    rules = facts(PLATFORM_OF_PROVIDER[provider])
    resources = stack.get("resource", {})
    # An adopted resource is the existing one: its name is whatever it already has.
    adopted = {block.get("to") for block in stack.get("import", [])}
    findings: list[Finding] = []
    for kind, by_name in sorted(resources.items()):
        known = rules["resources"].get(kind)
        if known is None:
            if kind.startswith(provider + "_"):
                findings.append(Finding(
                    f"{kind}.*", "no-facts",
                    f"the facts of {provider} {rules['version']} do not know {kind}: none of its rules "
                    f"can be checked; run scripts/gen-provider-facts", "scripts/gen-provider-facts"))
            continue  # terraform_data and other built-ins
        for name, config in sorted(by_name.items()):
            address = f"{kind}.{name}"
            findings += _unknown_at_plan(address, known, config, resources, rules, stack.get("locals", {}))
            findings += _read_back(address, kind, known, config)
            if address not in adopted:
                findings += _global_names(address, known, config, site, resources)
            findings += _conflicts(address, known, config)
            findings += _destroy_refused(address, kind, known, config)
    return findings


def unknown_attributes(stack: dict) -> list[str]:
    """Arguments the stack writes that the provider's schema does not have (stale or wrong facts)."""
    provider = provider_of(stack)
    if provider is None:
        return []
    rules = facts(PLATFORM_OF_PROVIDER[provider])["resources"]
    out = []
    for kind, by_name in stack.get("resource", {}).items():
        if kind not in rules:
            if kind != "terraform_data":
                out.append(kind)
            continue
        schema = rules[kind]["attributes"]
        for name, config in by_name.items():
            for path, _ in _paths(config):
                if path.split(".")[0] in META or path in schema or _nested_under_opaque(path, schema):
                    continue
                out.append(f"{kind}.{name}: {path}")
    return sorted(set(out))


META = {"lifecycle", "depends_on", "count", "for_each", "provider", "provisioner", "connection",
        "timeouts", "//"}


def _nested_under_opaque(path: str, schema: dict) -> bool:
    parts = path.split(".")
    # Below a map argument, keys are data; below an argument the reader could not follow, unknown.
    for i in range(1, len(parts)):
        above = schema.get(".".join(parts[:i]), {})
        if above.get("type") == "map" or "opaque" in above or (above.get("type") in ("list", "set") and not any(k.startswith(".".join(parts[:i]) + ".") for k in schema)):
            return True
    return False


def _paths(config: dict, prefix: str = ""):
    """(dotted path, value) of every argument set, blocks flattened (lists of blocks too)."""
    for key, value in config.items():
        path = prefix + key
        yield path, value
        blocks = value if isinstance(value, list) else [value]
        for block in blocks:
            if isinstance(block, dict):
                yield from _paths(block, path + ".")


# ---------------------------------------------------------------- unknown at the first plan

REFERENCE = re.compile(r"(?<![\w.])(data\.)?([a-z][a-z0-9_]*)\.([A-Za-z0-9_-]+)((?:\.[a-z0-9_]+|\[[^\]]*\])+)")


def _expressions(value) -> list[str]:
    """The text inside each ${...} of value, braces inside an expression kept."""
    out = []
    for text in _strings(value):
        i = text.find("${")
        while i >= 0:
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(text[i + 2:j - 1])
            i = text.find("${", j)
    return out


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _references(value) -> list[tuple[bool, str, str, list[str]]]:
    """(is data, type, name, attribute path) of every reference in value's expressions."""
    out = []
    for expr in _expressions(value):
        for m in REFERENCE.finditer(expr):
            path = re.findall(r"\.([a-z0-9_]+)", re.sub(r"\[[^\]]*\]", "", m.group(4)))
            out.append((bool(m.group(1)), m.group(2), m.group(3), path))
    return out


def is_unknown(value, resources: dict, rules: dict, depth: int = 0, local_values: dict | None = None) -> tuple[bool, str]:
    """Whether value is unknown at the first plan, and the reference that makes it so.

    A reference is known when it leads to what the configuration sets (and that is known), and
    unknown when it leads to what the provider computes: an ID, or an attribute Computed and not
    set. References to variables, locals and data sources count as known.
    """
    if depth > 8:
        return True, "a chain of references too long to follow"  # fail closed
    local_values = local_values or {}
    for expr in _expressions(value):
        for local in re.findall(r"(?<![\w.])local\.([A-Za-z0-9_]+)", expr):
            if local in local_values:
                unknown, why = is_unknown(local_values[local], resources, rules, depth + 1, local_values)
                if unknown:
                    return True, why
    for is_data, kind, name, path in _references(value):
        if is_data or kind in ("var", "local", "each", "count", "path", "terraform", "self"):
            continue
        config = resources.get(kind, {}).get(name)
        if config is None or not path:
            continue
        ref = f"{kind}.{name}.{'.'.join(path)}"
        if kind == "terraform_data":
            if path[0] != "output":
                return True, ref
            unknown, why = is_unknown(config.get("input"), resources, rules, depth + 1, local_values)
            if unknown:
                return True, why
            continue
        schema = rules["resources"].get(kind, {}).get("attributes", {})
        block, prefix, ended = config, "", True
        for segment in path:
            prefix += segment
            fact = schema.get(prefix, {})
            if isinstance(block, dict) and segment in block:
                block = block[segment]
                if isinstance(block, list) and block and isinstance(block[0], dict):
                    block = block[0]
                prefix += "."
                continue
            if segment == "id" or fact.get("computed") or not fact:
                return True, ref
            ended = False  # an argument left unset: null, or its default, known at plan
            break
        if ended:
            # the reference ends at what the configuration sets: a value, a list, or a whole
            # block, which is unknown if anything in it is, or if the provider computes a part
            unknown, why = is_unknown(block, resources, rules, depth + 1, local_values)
            if unknown:
                return True, why
            if isinstance(block, dict):
                computed = [k for k, f in schema.items() if k.startswith(prefix) and f.get("computed")
                            and "." not in k[len(prefix):] and k[len(prefix):] not in block]
                if computed:
                    return True, f"{ref}.{computed[0][len(prefix):]}"
    return False, ""


def _unknown_at_plan(address, known, config, resources, rules, local_values) -> list[Finding]:
    out = []
    for plan_check in known.get("plan_checks", []):
        if any(config.get(a) == v for a, v in plan_check.get("unless", {}).items()):
            continue  # the provider's check does not apply (an EGRESS firewall)
        given = [a for a in plan_check["reads"] if config.get(a) not in (None, [], "")]
        source = f"{plan_check['file']}:{plan_check['line']}"
        if not given:
            out.append(Finding(address, "unknown-at-plan",
                               f"the plan fails with \"{plan_check['error']}\": none of them is set", source))
            continue
        verdicts = [is_unknown(config[a], resources, rules, 0, local_values) for a in given]
        if all(unknown for unknown, _ in verdicts):
            why = ", ".join(f"{a} from {ref}" for a, (_, ref) in zip(given, verdicts))
            out.append(Finding(
                address, "unknown-at-plan",
                f"the first plan fails with \"{plan_check['error']}\": {why} is unknown until "
                f"applied, and {plan_check['function']} reads an unknown value as unset; give a "
                f"value known at plan time",
                source))
    return out


# ---------------------------------------------------------------- read back differently


def _read_back(address, kind, known, config) -> list[Finding]:
    out = []
    for (rule_kind, attribute), (applies, why) in READ_BACK.items():
        if rule_kind != kind:
            continue
        fact = known["attributes"].get(attribute, {})
        if not fact.get("force_new") or fact.get("computed") or attribute not in known.get("read_sets", {}):
            continue  # the provider no longer replaces on it: the rule is moot at this version
        if not applies(config):
            continue
        ignored = config.get("lifecycle", {}).get("ignore_changes", [])
        # only the whole argument: ignoring one disk, or one field, still replaces the node
        if ignored == "all" or attribute in ignored:
            continue
        out.append(Finding(
            address, "read-back",
            f"{attribute} is ForceNew and not Computed, and the provider reads it back from the "
            f"cloud ({why}): every later plan replaces the resource; add it to "
            f"lifecycle.ignore_changes",
            f"{_source(known, fact)}, read at {known['file']}:{known['read_sets'][attribute]}"))
    return out


def _bundles_local_ssd(config) -> bool:
    """Whether the instance's machine type comes with local SSD; a type the catalog does not
    know counts as one that does (fail closed: ignoring scratch_disk is harmless)."""
    machine = config.get("machine_type")
    if not isinstance(machine, str) or "${" in machine:
        return True
    known = catalog("gcp").machine_types.get(machine.rsplit("/", 1)[-1])
    return known is None or known.local_ssd == "bundled"


# ---------------------------------------------------------------- names global to an account


def _resolved(value: str, resources: dict) -> str:
    """value with each ${TYPE.NAME.ARG} that the stack sets to a string replaced by it."""
    def one(m):
        kind, name, arg = m.group(1), m.group(2), m.group(3)
        given = resources.get(kind, {}).get(name, {}).get(arg)
        return _resolved(given, resources) if isinstance(given, str) else m.group(0)
    return re.sub(r"\$\{([a-z][a-z0-9_]*)\.([A-Za-z0-9_-]+)\.([a-z0-9_]+)\}", one, value)


def _global_names(address, known, config, site, resources) -> list[Finding]:
    identity = known.get("identity") or {}
    if identity.get("scope") not in ("project", "account", "world"):
        return []
    if any(config.get(parent) for parent in identity.get("within", [])):
        return []  # unique only within its parent (a role's inline policy, a zone's record)
    out = []
    for attribute in identity.get("names", []):
        value = config.get(attribute)
        if attribute.endswith("_prefix") or not isinstance(value, str):
            continue  # a prefix gets a random suffix: it cannot collide
        value = _resolved(value, resources)
        if not re.search(rf"(?<![a-z0-9]){re.escape(site)}(?![a-z0-9])", value):
            where = {"project": "project", "account": "account", "world": "cloud"}[identity["scope"]]
            out.append(Finding(
                address, "global-name",
                f"{attribute} {value!r} is unique across the {where} and does not carry the site "
                f"{site!r}: the same cluster on two sites of one {where} collides, and a move "
                f"(which creates the target before it destroys the source) fails",
                identity.get("source") or f"{identity['file']}:{identity['line']} ({identity['template']})"))
    return out


# ---------------------------------------------------------------- conflicting arguments


def _blocks(config: dict, prefix: str = ""):
    """(dotted prefix, block) of the configuration and of each nested block in it."""
    yield prefix, config
    for key, value in config.items():
        for block in (value if isinstance(value, list) else [value]):
            if isinstance(block, dict) and key not in META:
                yield from _blocks(block, prefix + key + ".")


def _conflicts(address, known, config) -> list[Finding]:
    """ConflictsWith and ExactlyOneOf within each block the configuration sets: two arguments
    that exclude each other both set, or none of an ExactlyOneOf group."""
    schema = known["attributes"]
    out = []
    for prefix, block in _blocks(config):
        parent = prefix.rstrip(".")
        if parent and parent not in schema:
            continue  # below a map argument: data, not blocks
        pairs, groups = set(), set()
        for path, fact in schema.items():
            if path.rpartition(".")[0] != parent:
                continue
            for kind in ("conflicts_with", "exactly_one_of"):
                for other in fact.get(kind, []):
                    other_path = re.sub(r"\.\d+", "", other)
                    if other_path == path or other_path.rpartition(".")[0] != parent:
                        continue
                    pair = tuple(sorted((path, other_path)))
                    if _leaf(path) in block and _leaf(other_path) in block and pair not in pairs:
                        pairs.add(pair)
                        out.append(Finding(
                            address, "conflict",
                            f"{pair[0]} and {pair[1]} are both set; the provider takes "
                            f"{'only one of them' if kind == 'conflicts_with' else 'exactly one of them'}",
                            _source(known, fact)))
            listed = fact.get("exactly_one_of", [])
            # the SDK adds the key itself to its group (helper/schema validateExactlyOneAttribute)
            group = tuple(sorted({re.sub(r"\.\d+", "", g) for g in listed} | {path})) if listed else ()
            if not group or group in groups or any(g.rpartition(".")[0] != parent for g in group):
                continue
            groups.add(group)
            if not any(block.get(_leaf(g)) not in (None, [], "") for g in group):
                out.append(Finding(address, "conflict",
                                   f"none of {', '.join(group)} is set; the provider takes exactly one of them",
                                   _source(known, fact)))
    return out


def _source(known: dict, fact: dict) -> str:
    """Where an attribute's fact is in the provider's source: file:line."""
    return f"{fact.get('file', known['file'])}:{fact['line']}"


def _leaf(path: str) -> str:
    return path.rpartition(".")[2]


# ---------------------------------------------------------------- destroys the cloud refuses


def _destroy_refused(address, kind, known, config) -> list[Finding]:
    abandon = known.get("abandon")
    if kind not in DELETE_REFUSED or not abandon or config.get(abandon["attribute"]) == abandon["value"]:
        return []
    return [Finding(
        address, "destroy-refused",
        f"destroying it fails while {DELETE_REFUSED[kind]}; set "
        f"{abandon['attribute']} = \"{abandon['value']}\", which the provider offers for this",
        f"{abandon['file']}:{abandon['line']}")]
