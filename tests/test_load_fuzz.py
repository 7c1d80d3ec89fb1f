"""Fuzzing the loader (Hypothesis, fixed seed, bounded): seeded mutations of the example
definitions. Every mutation loads, or is refused with located problems; never a traceback,
and each within the time a pull request's plan job can afford."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from reconciler.errors import InvalidDefinitions
from reconciler.gitsource import Snapshot
from reconciler.load import load

ROOT = Path(__file__).resolve().parent.parent
FILES = {
    p.relative_to(ROOT).as_posix(): p.read_bytes()
    for top in ("sites", "clusters")
    for p in sorted((ROOT / top).rglob("*.yaml"))
}
NAMES = sorted(FILES)
# What a hostile or careless edit writes: YAML syntax, aliases, odd scalars, odd characters.
PIECES = [b":", b"- ", b"&a ", b"*a", b"{", b"}", b"[", b"]", b"\n", b"  ", b"\t", b"'", b'"', b"#", b"!!python/object:os.system",
          b"-1", b"0", b"1e400", b"null", b"~", b"yes", b"\xff", b"\x00", "\u202e".encode(), "é".encode(), b"..", b"/", b"%TAG ! x\n---\n"]


@st.composite
def mutated(draw) -> dict[str, bytes]:
    files = dict(FILES)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(NAMES))
        text = files[name]
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(("insert", "delete", "replace")))
        piece = draw(st.sampled_from(PIECES))
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        else:
            text = text[:at] + piece + text[at + len(piece):]
        files[name] = text
    return files


@seed(20261201)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_every_mutation_loads_or_is_refused_with_located_problems(files):
    started = time.monotonic()
    try:
        load(Snapshot(label="fuzz", revision=None, dirty=True, files=files))
    except InvalidDefinitions as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.location.path, problem  # every problem names its file
    assert time.monotonic() - started < 2.0
