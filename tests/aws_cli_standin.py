"""A stand-in for the AWS CLI's `aws eks ...`, built from botocore's EKS service model.

EKS access entries cannot be reached here, and moto does not implement them, so the
landing zone's removal of the creator's access entry runs against this instead: the CLI's
command names and options are the operations and input members of the official model
(`botocore/data/eks/*/service-2.json`, which the real CLI is generated from), a call missing
a required member or carrying an unknown one is refused as the CLI refuses it (exit 252), and
the operation's own error shapes are answered as the CLI prints them (exit 254).

The CLI's own global options `--region`, `--query` (JMESPath, with the `jmespath` package the
CLI itself uses) and `--output json|text` are taken as the CLI takes them.

The world is a JSON file (`AWS_STANDIN_WORLD`): {"entries": {cluster: {principal: type}},
"fail": {operation: error code to answer it with}, "calls": [[operation, params], ...]}.
Run as `python aws_cli_standin.py eks delete-access-entry --cluster-name ... ...`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from pathlib import Path

import botocore
import jmespath


def model() -> dict:
    (path,) = sorted(Path(botocore.__file__).parent.glob("data/eks/*/service-2.json.gz"))[-1:]
    return json.loads(gzip.decompress(path.read_bytes()))


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _fail(code: int, text: str) -> int:
    sys.stderr.write(text + "\n")
    return code


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "eks":
        return _fail(252, "usage: aws eks COMMAND [OPTIONS] (this stand-in knows the eks commands only)")
    service = model()
    operations = {_kebab(name): name for name in service["operations"]}
    if argv[1] not in operations:
        return _fail(252, f"aws: error: argument operation: Invalid choice: {argv[1]!r}")
    operation = operations[argv[1]]
    shape = service["shapes"][service["operations"][operation]["input"]["shape"]]
    options = {f"--{_kebab(member)}": member for member in shape.get("members", {})}
    params, globals_, rest = {}, {"--region": None, "--query": None, "--output": "json"}, argv[2:]
    while rest:
        option, value, rest = rest[0], rest[1] if len(rest) > 1 else None, rest[2:]
        if value is None or value.startswith("--"):
            return _fail(252, f"aws: error: argument {option}: expected one argument")
        if option in globals_:
            globals_[option] = value
        elif option in options:
            params[options[option]] = value
        else:
            return _fail(252, f"aws: error: Unknown options: {option}")
    missing = [m for m in shape.get("required", []) if m not in params]
    if missing:
        return _fail(252, "aws: error: the following arguments are required: " + ", ".join(f"--{_kebab(m)}" for m in missing))
    if not globals_["--region"]:
        return _fail(253, "You must specify a region.")
    world_path = Path(os.environ["AWS_STANDIN_WORLD"])
    world = json.loads(world_path.read_text())
    world.setdefault("calls", []).append([operation, params])
    errors = {e["shape"] for e in service["operations"][operation].get("errors", [])}

    def answer(code: str, message: str) -> int:
        world_path.write_text(json.dumps(world))
        return _fail(254, f"\nAn error occurred ({code}) when calling the {operation} operation: {message}")

    if operation in world.get("fail", {}):
        return answer(world["fail"][operation], "injected")
    entries = world.setdefault("entries", {})
    if params.get("clusterName") not in entries:
        assert "ResourceNotFoundException" in errors
        return answer("ResourceNotFoundException", f"No cluster found for name: {params.get('clusterName')}.")
    cluster = entries[params["clusterName"]]
    if operation == "ListAccessEntries":
        result = {"accessEntries": sorted(cluster)}
    elif operation in ("DescribeAccessEntry", "DeleteAccessEntry"):
        if params["principalArn"] not in cluster:
            assert "ResourceNotFoundException" in errors  # the model's own error for these operations
            return answer("ResourceNotFoundException", "The specified access entry resource is not found.")
        if operation == "DeleteAccessEntry":
            del cluster[params["principalArn"]]
            result = {}
        else:
            result = {"accessEntry": {"clusterName": params["clusterName"], "principalArn": params["principalArn"],
                                      "type": cluster[params["principalArn"]]}}
    else:
        return answer("InvalidRequestException", f"this stand-in does not carry out {operation}")
    world_path.write_text(json.dumps(world))
    if globals_["--query"]:
        result = jmespath.search(globals_["--query"], result)
    sys.stdout.write(_text(result) if globals_["--output"] == "text" else json.dumps(result, indent=4) + "\n")
    return 0


def _text(value) -> str:
    """The CLI's text output of a query's result: a list's items separated by tabs, a scalar as
    it is, null as None."""
    if value is None:
        return "None\n"
    if isinstance(value, list):
        return "\t".join(_text(v).rstrip("\n") for v in value) + "\n" if value else ""
    return f"{value}\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
