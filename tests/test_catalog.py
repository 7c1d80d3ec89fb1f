"""Machine-type resolution: the smallest type that satisfies a node spec, or why none does."""

from __future__ import annotations

from rpi.catalog import Catalog, MachineType, resolve
from rpi.spec import NodeSpec


def machine(name, cores, memory, gpu=None, gpus=0, ssd=0, fabric=""):
    return MachineType(name, name.rsplit("-", 1)[0], cores * 2, cores, memory, gpu, gpus, ssd, "bundled" if ssd else "none", fabric)


TYPES = [
    machine("cpu-8", 4, 32),
    machine("cpu-16", 8, 64),
    machine("cpu-64", 32, 256, ssd=3000),
    machine("gpu40-4", 24, 340, "nvidia-a100-40gb", 4),
    machine("gpu80-4", 24, 680, "nvidia-a100-80gb", 4, ssd=1500),
    machine("gpu80-8", 48, 1360, "nvidia-a100-80gb", 8, ssd=3000),
]
CAT = Catalog(
    "test",
    {m.name: m for m in TYPES},
    {"here": tuple(m.name for m in TYPES), "cpu-only": ("cpu-8", "cpu-16", "cpu-64")},
    {},
)


def test_smallest_satisfying_type():
    assert resolve(CAT, "here", NodeSpec(cores=6, memory_gb=40)).machine.name == "cpu-16"
    assert resolve(CAT, "here", NodeSpec(cores=4, memory_gb=32)).machine.name == "cpu-8"


def test_cpu_nodes_never_get_gpu_types():
    assert resolve(CAT, "here", NodeSpec(cores=40, memory_gb=300)).machine is None


def test_exact_gpu_node():
    node = NodeSpec(cores=48, memory_gb=1360, gpu_model="nvidia-a100-80gb", gpu_count=8, local_ssd_gb=3000)
    assert resolve(CAT, "here", node).machine.name == "gpu80-8"
    half = NodeSpec(cores=24, memory_gb=680, gpu_model="nvidia-a100-80gb", gpu_count=4)
    assert resolve(CAT, "here", half).machine.name == "gpu80-4"


def test_gpu_model_not_in_region_names_where_it_is():
    node = NodeSpec(cores=24, memory_gb=680, gpu_model="nvidia-a100-80gb", gpu_count=4)
    match = resolve(CAT, "cpu-only", node)
    assert match.machine is None
    assert match.explain() == "nvidia-a100-80gb is not offered in cpu-only; offered in here"


def test_impossible_spec_names_nearest_candidates_and_what_they_lack():
    node = NodeSpec(cores=48, memory_gb=2048, gpu_model="nvidia-a100-80gb", gpu_count=8)
    text = resolve(CAT, "here", node).explain()
    assert text.startswith("no type in here has 48 cores, 2048 GiB, 8x nvidia-a100-80gb; nearest: gpu80-8 lacks memory (1360 < 2048 GiB)")


def test_unknown_region():
    assert "region mars is not in the test catalog" in resolve(CAT, "mars", NodeSpec(1, 1)).explain()
