"""schema/ is generated from the models, never stale, and the example files satisfy it."""

from __future__ import annotations

import json

import jsonschema
import pytest
from ruamel.yaml import YAML

from conftest import ROOT
from reconciler import schema

EXAMPLES = [
    *(("site", p) for p in sorted((ROOT / "sites").glob("*.yaml"))),
    *(("cluster", p) for p in sorted((ROOT / "clusters").glob("*.yaml"))),
    *(("profile", p) for p in sorted((ROOT / "clusters" / "profiles").glob("*.yaml"))),
]


@pytest.mark.parametrize("name", sorted(schema.schemas()))
def test_committed_schema_is_fresh(name):
    committed = (ROOT / "schema" / name).read_text()
    assert committed == schema.render(schema.schemas()[name]), f"schema/{name} is stale: run scripts/gen-schema"


@pytest.mark.parametrize("kind,path", EXAMPLES, ids=[p.name for _, p in EXAMPLES])
def test_example_points_editors_at_its_schema_and_satisfies_it(kind, path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.split("$schema=", 1)[1]).resolve()
    assert target == ROOT / "schema" / f"{kind}.schema.json"
    jsonschema.validate(YAML(typ="safe").load(path.read_text()), json.loads(target.read_text()))


def test_schema_refuses_unknown_keys():
    cluster = json.loads((ROOT / "schema" / "cluster.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "placement": {"site": "a"}, "colour": "red"}, cluster)
    profile = json.loads((ROOT / "schema" / "profile.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"placement": {"site": "a"}}, profile)
