"""JSON Schema for editors and CI, generated from the pydantic models (`scripts/gen-schema`).

Files are partial documents: a cluster file may leave fields to the profiles it composes, and a
profile sets only what it shares. So the cluster schema requires only what a cluster alone must
say (name and placement), and the profile schema requires nothing and forbids the cluster-only
fields. The strict check of the composed cluster is `reconcile validate`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from reconciler.model import CLUSTER_ONLY_FIELDS, Cluster, Site

SCHEMA_DIR = "schema"
BASE_URI = "https://hpc-reconciler.example/schema/"


def _without_required(node):
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


def schemas() -> dict[str, dict]:
    """{file name: schema}."""
    site = Site.model_json_schema()
    full = Cluster.model_json_schema()

    cluster = _without_required(copy.deepcopy(full))
    cluster["required"] = ["name", "placement"]
    cluster["description"] = (Cluster.__doc__ or "").strip() + " Fields may come from the profiles it composes."
    for name, definition in full.get("$defs", {}).items():  # a placement is never partial
        if name == "Placement":
            cluster["$defs"][name] = definition

    profile = _without_required(copy.deepcopy(full))
    for key in CLUSTER_ONLY_FIELDS:
        profile["properties"].pop(key)
    profile["title"] = "Profile"
    profile["description"] = "A partial cluster shared by the clusters that list it in `profiles`."
    out = {"site.schema.json": site, "cluster.schema.json": cluster, "profile.schema.json": profile}
    from reconciler.output import DOCUMENTS  # the --json contract of each command

    for command, model in DOCUMENTS.items():
        out[f"output/{command}.schema.json"] = model.model_json_schema()
    for name, schema in out.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = BASE_URI + name
    return out


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(root: Path) -> list[Path]:
    directory = root / SCHEMA_DIR
    directory.mkdir(exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(__file__).resolve().parent.parent):
        print(f"wrote {path}")
