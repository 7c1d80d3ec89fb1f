"""Rolling a pool on purpose (`node_pools.X.generation`), on a real engine: the Terraform
semantics the clouds' stacks rely on (`replace_triggered_by` naming a `terraform_data`'s
output), and the local platform's rollout in batches of `services.scheduler.roll_batch`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from reconciler.engine import select_engine
from reconciler.plan import summarize
from reconciler.synth import render_json
from rpi import cdk

pytestmark = pytest.mark.slow


def _stack(generation: int, rolled: bool = True) -> str:
    """Two nodes of a pool as a cloud stack makes them, as terraform_data (no provider here);
    `rolled` False: as stacks were before pools had a generation."""
    pool = SimpleNamespace(name="compute", generation=generation)

    def build(app):
        stack = cdk.new_stack(app, "roll")
        cdk.local_backend(stack, "roll.tfstate")
        nodes = [cdk.data_resource(stack, f"node_compute_{i}", {"hostname": f"c-{i}"}) for i in range(2)]
        if rolled:
            cdk.rolled_by_generation(stack, pool, nodes)
        return {"roll": stack}

    return render_json(cdk.synthesize(build)["roll"])


def test_a_pools_generation_replaces_its_nodes_once_each_time_it_is_raised(tmp_path):
    engine = select_engine("auto", tmp_path / "work", tmp_path)
    workdir = tmp_path / "work" / "roll"
    workdir.mkdir(parents=True)

    def plan(generation: int, rolled: bool = True) -> dict[str, str]:
        (workdir / "cdk.tf.json").write_text(_stack(generation, rolled))
        summary = summarize(engine.plan(workdir))
        return {c.address: c.action for c in summary.changes if c.action != "no-op"}

    (workdir / "cdk.tf.json").write_text(_stack(0, rolled=False))
    engine.init(workdir, {"path": str(tmp_path / "roll.tfstate")})
    assert plan(0, rolled=False) == {"terraform_data.node_compute_0": "create", "terraform_data.node_compute_1": "create"}
    engine.apply(workdir)
    # shipping the generation replaces no running node: its creation triggers nothing
    assert plan(0) == {"terraform_data.generation_compute": "create"}
    engine.apply(workdir)
    assert plan(0) == {}
    assert plan(1) == {"terraform_data.generation_compute": "update",
                       "terraform_data.node_compute_0": "replace", "terraform_data.node_compute_1": "replace"}
    engine.apply(workdir)
    assert plan(1) == {}, "converged: a roll happens once"
    assert plan(2) == {"terraform_data.generation_compute": "update",
                       "terraform_data.node_compute_0": "replace", "terraform_data.node_compute_1": "replace"}
    engine.apply(workdir)
    assert plan(2) == {}


def test_a_local_pool_rolled_on_purpose_goes_in_the_definitions_batches_and_converges(applied, cli):
    applied.replace("clusters/slurm-hpc.yaml", "    count: 4\n", "    count: 4\n    generation: 1\n")
    applied.write("clusters/slurm-hpc.yaml", applied.read("clusters/slurm-hpc.yaml") + "services:\n  scheduler:\n    kind: slurm\n    roll_batch: 2\n")
    code, out, err = cli("--dry-run", "--json", "--repo", str(applied.path))
    unit = next(u for u in json.loads(out)["units"] if u["key"] == "cluster:slurm-hpc@local-b")
    assert unit["change_class"]["kind"] == "rolling", unit
    assert "4 nodes drained and replaced, 2 at a time" in unit["change_class"]["detail"], unit
    code, out, err = cli("apply", "--auto-approve", "--repo", str(applied.path))
    assert code == 0, out + err
    code, out, err = cli("--dry-run", "--json", "--repo", str(applied.path))
    again = next(u for u in json.loads(out)["units"] if u["key"] == "cluster:slurm-hpc@local-b")  # listed: its file changed
    assert code == 0 and not any(again["changes"].values()), again["changes"]  # converged: a roll happens once
