"""Extract the facts that the synthesized stacks depend on from the pinned providers.

    scripts/gen-provider-facts --google-src DIR   # DIR: a git snapshot of terraform-provider-google

The Google facts come from the provider's own Go source at the tag of the pinned version,
read with git from a repository snapshot (no work tree needed): every resource's schema
(Required, Optional, Computed, ForceNew, ConflictsWith, ExactlyOneOf, AtLeastOneOf, nested
blocks), the CustomizeDiff functions that read arguments with GetOk (to which an unknown value
reads as unset), the arguments its Read function sets, the template of its ID (which says
whether its name is global to the project) and a deletion_policy that abandons instead of
deleting. Each fact names its file and line at that tag.

The AWS facts come from the pinned cdktf-cdktf-provider-aws package, generated from the
provider's schema at its version (the provider's source repository is too large to bring here):
which arguments each resource takes, which attributes are computed, and which resources take no
`region`, i.e. belong to a global service whose names are global to the account.

Only the resource types that the constructs can make are extracted (the provider modules that
constructs/rpi/gcp and constructs/rpi/aws load).
The output is deterministic: run it twice, get the same bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS = {"google": ROOT / "constructs/rpi/gcp/provider_facts.json",
         "aws": ROOT / "constructs/rpi/aws/provider_facts.json"}
GOLDEN = ROOT / "tests/golden"

# Facts about the clouds that no provider source states, each with the document that does.
CLOUD_NAMES = {
    "google_storage_bucket": {
        "names": ["name"], "scope": "world",
        "source": "https://cloud.google.com/storage/docs/buckets#naming: bucket names live in a "
                  "single global namespace"},
    "google_service_account": {
        "names": ["account_id"], "scope": "project",
        "source": "https://cloud.google.com/iam/docs/service-accounts-create: the account ID "
                  "is unique within the project"},
    "aws_route53_zone": {
        "names": [], "scope": "none",
        "source": "https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/hosted-zones-working-with.html: "
                  "several hosted zones may have the same name"},
    "aws_s3_bucket": {
        "names": ["bucket"], "scope": "world",
        "source": "https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html: "
                  "bucket names are unique across all accounts in a partition"},
}


def used_types(provider: str) -> list[str]:
    sys.path.insert(0, str(ROOT / "constructs"))
    from rpi.provider_rules import constructed_types
    return constructed_types(provider)


# ---------------------------------------------------------------------------------------------
# A small reader of Go literals: enough of Go's lexical rules (strings, raw strings, runes,
# comments) to match braces and split a composite literal into its top-level elements.


def _skip(src: str, i: int) -> int:
    """Index past the string, rune or comment starting at i, or i itself."""
    c = src[i]
    if c == '"' or c == "'":
        j = i + 1
        while src[j] != c:
            j += 2 if src[j] == "\\" else 1
        return j + 1
    if c == "`":
        return src.index("`", i + 1) + 1
    if src.startswith("//", i):
        end = src.find("\n", i)
        return len(src) if end < 0 else end
    if src.startswith("/*", i):
        return src.index("*/", i + 2) + 2
    return i


def matching(src: str, i: int) -> int:
    """Index of the bracket closing the one at i."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = [pairs[src[i]]]
    j = i + 1
    while stack:
        k = _skip(src, j)
        if k != j:
            j = k
            continue
        c = src[j]
        if c in pairs:
            stack.append(pairs[c])
        elif c in "})]":
            if c != stack.pop():
                raise ValueError(f"unbalanced {c!r} at {j}")
        j += 1
    return j - 1


def elements(src: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each top-level, comma-separated element between start and end."""
    out, depth, j, begin = [], 0, start, start
    while j < end:
        k = _skip(src, j)
        if k != j:
            j = k
            continue
        c = src[j]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append((begin, j))
            begin = j + 1
        j += 1
    out.append((begin, end))
    return [(a, b) for a, b in out if src[a:b].strip() and not _only_comments(src[a:b])]


def _only_comments(text: str) -> bool:
    return not re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S).strip()


def _strip_leading(src: str, a: int) -> int:
    while True:
        while a < len(src) and src[a].isspace():
            a += 1
        k = _skip(src, a) if src.startswith(("//", "/*"), a) else a
        if k == a:
            return a
        a = k


def keyed(src: str, a: int, b: int) -> tuple[str, int, int] | None:
    """Split `Key: value` (Key an identifier or a string) into (key, value start, value end)."""
    a = _strip_leading(src, a)
    m = re.compile(r'("([^"\\]*)"|[A-Za-z_][A-Za-z0-9_]*)\s*:(?!=)').match(src, a)
    if not m:
        return None
    return (m.group(2) if m.group(2) is not None else m.group(1)), _strip_leading(src, m.end()), b


def strings(text: str) -> list[str]:
    return re.findall(r'"([^"\\]*)"', text)


# ---------------------------------------------------------------------------------------------
# The Google provider's source at a tag, read with git.


@dataclass
class GoSource:
    git_dir: Path
    tag: str
    _files: dict[str, str] = field(default_factory=dict)

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.git_dir), *args], check=True,
                              capture_output=True, text=True).stdout

    def read(self, path: str) -> str:
        if path not in self._files:
            self._files[path] = self.git("show", f"{self.tag}:{path}")
        return self._files[path]

    def declarations(self) -> dict[str, list[tuple[str, int]]]:
        """Every top-level func and var of the provider at the tag: name -> [(path, line)]."""
        if not hasattr(self, "_decls"):
            out = self.git("grep", "-n", "-E", r"^(func|var) [A-Za-z_]\w*", self.tag, "--",
                           "google/*.go", ":!*_test.go")
            self._decls: dict[str, list[tuple[str, int]]] = {}
            for line in out.splitlines():
                _, path, number, decl = line.split(":", 3)
                name = re.match(r"(?:func|var) (\w+)", decl).group(1)
                self._decls.setdefault(name, []).append((path, int(number)))
        return self._decls

    def find(self, name: str, under: str) -> list[tuple[str, int]]:
        """Where name is declared: in the package under, else anywhere."""
        hits = self.declarations().get(name, [])
        near = [h for h in hits if str(Path(h[0]).parent) == under]
        return near or hits


def line_of(src: str, i: int) -> int:
    return src.count("\n", 0, i) + 1


class GoogleExtractor:
    """Facts from terraform-provider-google's SDKv2 resources."""

    def __init__(self, source: GoSource):
        self.src = source

    def constructors(self) -> dict[str, tuple[str, str]]:
        """Resource type -> (package alias, constructor expression)."""
        text = self.src.read("google/provider/provider_mmv1_resources.go")
        out = {}
        for var in re.finditer(r"var (\w+) = map\[string\]\*schema\.Resource\{", text):
            if "atasource" in var.group(1):
                continue
            end = matching(text, var.end() - 1)
            for m in re.finditer(r'^\s*"(google_\w+)":\s*(.+?),\s*$', text[var.end():end], re.M):
                out[m.group(1)] = m.group(2)
        return out

    def package_dir(self, alias: str) -> str:
        if not hasattr(self, "_dirs"):
            self._dirs = {str(Path(p).parent) for hits in self.src.declarations().values() for p, _ in hits}
        dirs = self._dirs
        for candidate in (f"google/services/{alias}", f"google/{alias}"):
            if candidate in dirs:
                return candidate
        raise LookupError(f"no package {alias}")

    def declared(self, kind: str, name: str, under: str) -> tuple[str, str, int]:
        """(path, text, offset) of the top-level `kind name` (func or var), in the package
        `under` if it has one, else anywhere."""
        hits = self.src.find(name, under)
        if not hits:
            raise LookupError(f"no {kind} {name} under {under}")
        path, number = hits[0]
        text = self.src.read(path)
        return path, text, _nth_line(text, number)

    def function(self, name: str, under: str) -> tuple[str, str, int, int]:
        """(path, text, body start, body end) of `func name(`."""
        path, text, start = self.declared("func", name, under)
        brace = _body_brace(text, start)
        return path, text, brace, matching(text, brace)

    def variable(self, name: str, under: str) -> tuple[str, str, int]:
        """(path, text, offset of its value's brace) of `var name = ...{`."""
        path, text, start = self.declared("var", name, under)
        return path, text, text.index("{", start)

    def string_list(self, value: str, path: str, text: str) -> list[str]:
        """A []string{...} literal, or the variable (package-level, in a var block) holding one."""
        if value.startswith("[]string{"):
            return strings(value)
        if not re.fullmatch(r"\w+", value):
            raise ValueError(f"{path}: cannot read the list {value[:60]!r}")
        pattern = re.compile(rf"^\s*(?:var\s+)?{value}\s*=\s*\[\]string\{{", re.M)
        candidates = [(path, text)] + [(p, self.src.read(p)) for p in self.package_files(str(Path(path).parent)) if p != path]
        for _, source in candidates:
            m = pattern.search(source)
            if m:
                return strings(source[m.end() - 1:matching(source, m.end() - 1) + 1])
        raise ValueError(f"{path}: no []string variable {value}")

    def package_files(self, directory: str) -> list[str]:
        return sorted({p for hits in self.src.declarations().values() for p, _ in hits if str(Path(p).parent) == directory})

    # -- schema ------------------------------------------------------------------------------

    def schema_map(self, path: str, text: str, brace: int, prefix: str, out: dict, pkg: str):
        for a, b in elements(text, brace + 1, matching(text, brace)):
            kv = keyed(text, a, b)
            if not kv:
                continue
            name, va, vb = kv
            self.attribute(path, text, va, vb, prefix + name, out, pkg)

    def attribute(self, path, text, va, vb, name, out, pkg):
        value = text[va:vb].strip()
        if value.startswith("{") or value.startswith("&schema.Schema{"):
            brace = text.index("{", va)
        else:
            call = re.match(r"(?:(\w+)\.)?(\w+)\(\)", value)
            if not call:
                out[name] = {"line": line_of(text, va), "file": path, "opaque": value[:60]}
                return
            under = self.package_dir(call.group(1)) if call.group(1) else str(Path(path).parent)
            path, text, body, end = self.function(call.group(2), under)
            brace = text.index("&schema.Schema{", body) + len("&schema.Schema")
            pkg = under
        facts = {"file": path, "line": line_of(text, va)}
        elem = None
        for a, b in elements(text, brace + 1, matching(text, brace)):
            kv = keyed(text, a, b)
            if not kv:
                continue
            key, ka, kb = kv
            v = text[ka:kb].strip()
            if key in ("Required", "Optional", "Computed", "ForceNew", "Sensitive") and v == "true":
                facts[key.lower().replace("forcenew", "force_new")] = True
            elif key == "Type":
                facts["type"] = v.replace("schema.Type", "").lower()
            elif key in ("ConflictsWith", "ExactlyOneOf", "AtLeastOneOf", "RequiredWith"):
                facts[re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()] = self.string_list(v, path, text)
            elif key == "Default":
                facts["default"] = True
            elif key == "Elem":
                elem = (ka, kb)
        out[name] = facts
        if elem:
            self.elem(path, text, *elem, name + ".", out, pkg)

    def elem(self, path, text, ea, eb, prefix, out, pkg):
        value = text[ea:eb].strip()
        if value.startswith("&schema.Resource{"):
            self.resource_schema(path, text, text.index("{", ea), prefix, out, pkg)
            return
        call = re.match(r"(?:(\w+)\.)?(\w+)\(\)", value)
        if call:
            under = self.package_dir(call.group(1)) if call.group(1) else str(Path(path).parent)
            fpath, ftext, body, end = self.function(call.group(2), under)
            m = re.compile(r"&schema\.Resource\{").search(ftext, body, end)
            if m:
                self.resource_schema(fpath, ftext, m.end() - 1, prefix, out, under)

    def resource_schema(self, path, text, brace, prefix, out, pkg):
        for a, b in elements(text, brace + 1, matching(text, brace)):
            kv = keyed(text, a, b)
            if kv and kv[0] == "Schema":
                self.schema_value(path, text, kv[1], kv[2], prefix, out, pkg)

    def schema_value(self, path, text, va, vb, prefix, out, pkg):
        value = text[va:vb].strip()
        if value.startswith("map[string]*schema.Schema{"):
            self.schema_map(path, text, text.index("{", va), prefix, out, pkg)
            return
        if value.startswith("tpgresource.MergeSchemas("):
            paren = text.index("(", va)
            for a, b in elements(text, paren + 1, matching(text, paren)):
                self.schema_value(path, text, _strip_leading(text, a), b, prefix, out, pkg)
            return
        alias, _, name = value.rpartition(".")  # a package variable holding a schema map
        under = self.package_dir(alias) if alias else pkg
        vpath, vtext, brace = self.variable(name, under)
        self.schema_map(vpath, vtext, brace, prefix, out, under)

    # -- one resource ------------------------------------------------------------------------

    def resource(self, kind: str, constructor: str) -> dict:
        iam = re.match(r"tpgiamresource\.ResourceIamMember\((\w+)\.(\w+),", constructor)
        if iam:
            return self.iam_member(kind, iam.group(1), iam.group(2))
        m = re.match(r"(\w+)\.(\w+)\(\)", constructor)
        pkg = self.package_dir(m.group(1))
        path, text, body, end = self.function(m.group(2), pkg)
        lit = re.compile(r"&schema\.Resource\{").search(text, body, end)
        brace = lit.end() - 1
        facts: dict = {"file": path, "line": line_of(text, body), "attributes": {}}
        fields = {}
        for a, b in elements(text, brace + 1, matching(text, brace)):
            kv = keyed(text, a, b)
            if kv:
                fields[kv[0]] = (kv[1], kv[2])
        if "Schema" in fields:
            self.schema_value(path, text, *fields["Schema"], "", facts["attributes"], pkg)
        if "CustomizeDiff" in fields:
            facts["plan_checks"] = self.plan_checks(text[slice(*fields["CustomizeDiff"])], pkg)
        for op, key in (("Read", "read_sets"), ("Create", "identity")):
            handler = fields.get(op) or fields.get(op + "Context") or fields.get(op + "WithoutTimeout")
            if not handler:
                continue
            name = text[slice(*handler)].strip()
            if not re.fullmatch(r"\w+", name):
                continue
            hpath, htext, hb, he = self.function(name, pkg)
            if key == "read_sets":
                facts[key] = {m.group(1): line_of(htext, m.start())
                              for m in re.finditer(r'd\.Set\("(\w+)"', htext[:he]) if m.start() > hb}
            else:
                facts[key] = self.identity(hpath, htext, hb, he)
        if "Delete" in fields:
            name = text[slice(*fields["Delete"])].strip()
            if re.fullmatch(r"\w+", name):
                dpath, dtext, db, de = self.function(name, pkg)
                m = re.compile(r'd\.Get\("(deletion_policy)"\);\s*\w+ == "(ABANDON)"').search(dtext, db, de)
                if m:
                    facts["abandon"] = {"attribute": m.group(1), "value": m.group(2),
                                        "file": dpath, "line": line_of(dtext, m.start())}
        if facts.get("identity") is None:
            facts.pop("identity", None)
        return facts

    def iam_member(self, kind: str, alias: str, var: str) -> dict:
        attributes: dict = {}
        bpath, btext, bbrace = self.variable("IamMemberBaseSchema", "google/tpgiamresource")
        self.schema_map(bpath, btext, bbrace, "", attributes, "google/tpgiamresource")
        ppath, ptext, pbrace = self.variable(var, self.package_dir(alias))
        self.schema_map(ppath, ptext, pbrace, "", attributes, self.package_dir(alias))
        return {"file": bpath, "line": line_of(btext, bbrace), "attributes": attributes}

    def plan_checks(self, value: str, pkg: str) -> list[dict]:
        """CustomizeDiff functions that fail the plan when none of some arguments is set, as
        GetOk reads them: an unknown value reads as unset. Only an error under a condition that
        is all such negated reads counts (`if !aOk && !bOk { return fmt.Errorf(...) }`), with the
        guard around it if it has one (`if direction != "EGRESS" {`)."""
        out = []
        for name in re.findall(r"(?<![\w.])(\w+)(?=\s*[,)]|\s*$)", value.replace("customdiff.All(", "")):
            try:
                path, text, body, end = self.function(name, pkg)
            except LookupError:
                continue
            block = text[body:end]
            bound = dict((v, a) for v, a in re.findall(r'_, (\w+) := diff\.GetOk(?:Exists)?\("(\w+)"\)', block))
            m = re.search(r"if ((?:!\w+\s*&&\s*)*!\w+)\s*\{\s*return (?:fmt\.Errorf|errors\.New)\(\"([^\"]*)\"", block)
            if not m:
                continue
            names = re.findall(r"!(\w+)", m.group(1))
            if not names or any(n not in bound for n in names):
                continue
            check = {"function": name, "file": path, "line": line_of(text, body),
                     "reads": sorted({bound[n] for n in names}), "error": m.group(2)}
            guard = re.search(r'(\w+) := diff\.Get\("(\w+)"\)\.\(string\)\s*if \1 != "(\w+)" \{', block[:m.start()])
            if guard:
                check["unless"] = {guard.group(2): guard.group(3)}
            out.append(check)
        return out

    def identity(self, path, text, body, end) -> dict | None:
        m = (re.compile(r'id, err := tpgresource\.ReplaceVars\(d, config, "([^"]+)"\)').search(text, body, end)
             or re.compile(r'd\.SetId\(fmt\.Sprintf\("([^"]+)"').search(text, body, end))
        if not m:
            return None
        template = m.group(1)
        located = any(p in template for p in ("{{region}}", "{{zone}}", "{{location}}", "/zones/", "/regions/", "/locations/"))
        names = [n for n in re.findall(r"\{\{(\w+)\}\}", template)
                 if n not in ("project", "region", "zone", "location")]
        return {"template": template, "scope": "location" if located else "project", "names": names,
                "file": path, "line": line_of(text, m.start())}


def _nth_line(text: str, number: int) -> int:
    i = 0
    for _ in range(number - 1):
        i = text.index("\n", i) + 1
    return i


def _body_brace(text: str, start: int) -> int:
    """The brace opening the body of the func declared at start (past its parameters)."""
    j = matching(text, text.index("(", start))
    while True:
        j += 1
        k = _skip(text, j)
        if k != j:
            j = k - 1
            continue
        if text[j] == "(":
            j = matching(text, j)
        elif text[j] == "{":
            return j


def google_facts(git_dir: Path, version: str, kinds: list[str] | None = None) -> dict:
    source = GoSource(git_dir, f"v{version}")
    commit = source.git("rev-list", "-n", "1", source.tag).strip()
    extractor = GoogleExtractor(source)
    constructors = extractor.constructors()
    resources = {}
    for kind in kinds or used_types("google"):
        if kind not in constructors:
            raise LookupError(f"{kind}: no such resource in hashicorp/google {version}")
        facts = extractor.resource(kind, constructors[kind])
        if kind in CLOUD_NAMES:
            facts["identity"] = dict(CLOUD_NAMES[kind])
        resources[kind] = facts
    for facts in resources.values():
        for a in facts["attributes"].values():
            if a.get("file") == facts["file"]:
                del a["file"]
    return {"provider": "hashicorp/google", "version": version,
            "source": {"repository": "github.com/hashicorp/terraform-provider-google",
                       "tag": source.tag, "commit": commit},
            "resources": resources}


# ---------------------------------------------------------------------------------------------
# AWS: the jsii assembly of the pinned cdktf-cdktf-provider-aws package.


def aws_facts() -> dict:
    import importlib.util
    package = Path(importlib.util.find_spec("cdktf_cdktf_provider_aws").origin).parent
    tgz = next(package.joinpath("_jsii").glob("*.jsii.tgz"))
    with tarfile.open(tgz) as archive:
        assembly = json.load(archive.extractfile("package/.jsii"))
    types = assembly["types"]
    versions = set()
    by_kind = {}
    for fqn, t in types.items():
        if t.get("kind") != "class":
            continue
        for p in t.get("properties", []):
            if p.get("name") == "tfResourceType" and p.get("const"):
                docs = t.get("docs", {}).get("summary", "") + t.get("docs", {}).get("remarks", "")
                m = re.search(r"\{@link https://registry\.terraform\.io/providers/hashicorp/aws/([\d.]+)/docs/resources/(\w+)", docs)
                if m:
                    versions.add(m.group(1))
                    by_kind["aws_" + m.group(2)] = fqn
    (version,) = versions
    resources = {}
    for kind in used_types("aws"):
        fqn = by_kind[kind]
        config = types[fqn + "Config"]
        attributes = {}
        _aws_arguments(types, config, "", attributes)
        for p in types[fqn].get("properties", []):
            name = _snake(p["name"])
            # A read-only attribute that is no argument: computed by the provider.
            if (p.get("immutable") and not p.get("static") and name not in attributes
                    and not name.endswith("_input") and p["name"] in _computed_names(types, fqn)):
                attributes[name] = {"computed": True}
        facts = {"file": f"{fqn} ({tgz.name})", "attributes": dict(sorted(attributes.items()))}
        if kind in CLOUD_NAMES:
            facts["identity"] = dict(CLOUD_NAMES[kind])
        elif "region" not in attributes:
            names = [n for n in ("name", "name_prefix") if n in attributes]
            # A name unique only within its parent: an inline policy's within its role or
            # group, a record's within its zone.
            parents = [n for n in ("role", "group", "user") if kind.startswith(f"aws_iam_{n}_")]
            parents += [n for n in ("zone_id",) if attributes.get(n, {}).get("required")]
            facts["identity"] = {"scope": "account", "names": names, "within": parents,
                                 "source": "no region argument: a global service"}
        resources[kind] = facts
    return {"provider": "hashicorp/aws", "version": version,
            "source": {"package": f"cdktf-cdktf-provider-aws {assembly['version']}",
                       "generated_from": f"the schema of hashicorp/aws {version}"},
            "resources": resources}


def _aws_arguments(types: dict, struct: dict, prefix: str, out: dict, depth: int = 0) -> None:
    """Arguments of a config struct, nested blocks (structs, lists of structs) as dotted paths."""
    for p in struct.get("properties", []):
        name = prefix + _snake(p["name"])
        fact = {"required": True} if not p.get("optional") else {"optional": True}
        kind, block = _aws_type(types, p["type"])
        if kind:
            fact["type"] = kind
        out[name] = fact
        if block and depth < 6:
            _aws_arguments(types, types[block], name + ".", out, depth + 1)


def _aws_type(types: dict, t: dict) -> tuple[str, str | None]:
    """(type, fqn of the nested block's struct or None) of a jsii type reference."""
    if "primitive" in t:
        return {"string": "string", "number": "number", "boolean": "bool", "any": ""}.get(t["primitive"], ""), None
    if "collection" in t:
        kind = t["collection"]["kind"]
        _, block = _aws_type(types, t["collection"]["elementtype"])
        return ("map" if kind == "map" else "list"), (block if kind == "array" else None)
    if "union" in t:
        for member in t["union"]["types"]:
            kind, block = _aws_type(types, member)
            if block or kind in ("list", "map"):
                return kind, block
        return "", None
    fqn = t.get("fqn", "")
    if types.get(fqn, {}).get("datatype"):
        return "block", fqn
    return "", None


def _computed_names(types: dict, fqn: str) -> set[str]:
    """Getters the generated class declares itself (not those of TerraformResource)."""
    return {p["name"] for p in types[fqn].get("properties", [])
            if p.get("locationInModule") and not p.get("overrides")}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def render(facts: dict) -> str:
    """One resource attribute a line, so a version bump reads as a diff of facts."""
    lines = ["{"]
    head = {k: v for k, v in facts.items() if k != "resources"}
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)},")
    lines.append('  "resources": {')
    kinds = list(facts["resources"])
    for n, kind in enumerate(kinds):
        r = facts["resources"][kind]
        lines.append(f"    {json.dumps(kind)}: {{")
        keys = list(r)
        for m, key in enumerate(keys):
            comma = "," if m < len(keys) - 1 else ""
            if key == "attributes":
                lines.append('      "attributes": {')
                attrs = list(r[key])
                for i, a in enumerate(attrs):
                    c = "," if i < len(attrs) - 1 else ""
                    lines.append(f"        {json.dumps(a)}: {json.dumps(r[key][a], sort_keys=True)}{c}")
                lines.append("      }" + comma)
            else:
                lines.append(f"      {json.dumps(key)}: {json.dumps(r[key], sort_keys=True)}{comma}")
        lines.append("    }" + ("," if n < len(kinds) - 1 else ""))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def pinned_version(provider: str) -> str:
    """The version the constructs pin, as the synthesized stacks declare it."""
    prefix = {"google": "gcp", "aws": "aws"}[provider]
    for path in sorted((GOLDEN / prefix).glob("*.tf.json")):
        return json.loads(path.read_text())["terraform"]["required_providers"][provider]["version"]
    raise LookupError(provider)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--google-src", type=Path, help="git directory of terraform-provider-google")
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    made = {"aws": aws_facts()}
    if args.google_src:
        made["google"] = google_facts(args.google_src, pinned_version("google"))
    stale = []
    for provider, facts in made.items():
        text = render(facts)
        if args.check:
            if FACTS[provider].read_text() != text:
                stale.append(provider)
        else:
            FACTS[provider].write_text(text)
            print(f"wrote {FACTS[provider].relative_to(ROOT)}: {len(facts['resources'])} resource types "
                  f"of {facts['provider']} {facts['version']}")
    if args.check and not args.google_src:
        print("the Google facts were not checked: give --google-src GIT_DIR (a snapshot of "
              "terraform-provider-google)", file=sys.stderr)
    for provider in stale:
        print(f"{FACTS[provider].relative_to(ROOT)} is stale: run scripts/gen-provider-facts", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
