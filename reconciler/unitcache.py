"""Resolved cluster units kept by content (`REPO/.reconcile/cache/units`): a cluster is resolved
again (its layers rendered, its spec hashed) only when what it is made from changes.

The key is everything a cluster's unit follows from: the bytes of its file, its profiles and
its site's file, the subnet its site allocated it, its site's unit, and the code that builds
units (every module of the reconciler, the constructs and the node package, and pydantic's
version). An entry holds the unit as plain JSON with a checksum of that text; one that does not
read back whole (damaged, cut short, another key's, another shape) is ignored and written again:
it is never trusted. The spec, most of an entry, is decoded only if the run asks for it. Each
code version keeps its entries in a folder of its own; the first entry a new version writes
removes the others' (`prune`). Of the user data only the cluster's facts are kept: the rest, the node package, is a
template made once a run (`layers.user_data_of`), cheaper to fill than to read.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import types
import typing
from pathlib import Path

FORMAT = 2  # 2: the spec on a line of its own, decoded when asked for
_directory: Path | None = None


def use(directory: Path | None) -> None:
    """Keep units in `directory` (None: resolve every cluster, keep nothing)."""
    global _directory
    _directory = directory


def enabled() -> bool:
    return _directory is not None


@functools.cache
def code_digest() -> str:
    """The code units are built by, read once a run (a few milliseconds)."""
    import sys

    import pydantic
    import ruamel.yaml

    import rpi
    from reconciler import nodepkg

    # what parses the definitions and renders the layers is code too: its versions are in the key
    h = hashlib.sha256(f"{FORMAT}\0{pydantic.VERSION}\0{ruamel.yaml.__version__}\0{sys.version}\0".encode())
    roots = (Path(__file__).parent, Path(rpi.__file__).parent, nodepkg.source_dir())
    for root in roots:  # every file, data too (the catalogs' offers.csv decide zones and refusals)
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def key(parts: typing.Iterable[bytes]) -> str:
    h = hashlib.sha256(code_digest().encode())
    for part in parts:
        h.update(b"\0%d\0" % len(part))
        h.update(part)
    return h.hexdigest()


def read(key: str, cls: type, spec_cls: type):
    """(the unit kept under `key`, its spec still None; a function that decodes the spec), or
    None. The spec, most of an entry, is decoded only when it is asked for: a run that plans
    nothing needs the units' keys, state and hashes only. Its bytes are checked here, with the
    rest; one that still does not decode (ValueError) is for the caller to make again."""
    if _directory is None:
        return None
    try:
        head, _, body = (_version_dir() / key[:2] / f"{key}.json").read_bytes().partition(b"\n")
        stored = json.loads(head)
        if stored.get("key") != key or hashlib.sha256(body).hexdigest() != stored.get("checksum"):
            return None
        fields, newline, spec = body.partition(b"\n")
        if not newline:
            return None
        unit = _decoder(cls)(json.loads(fields))
        return unit, lambda: _decoder(spec_cls)(json.loads(spec))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write(key: str, unit) -> None:
    """Keep `unit` under `key`: a line naming the key and the checksum of the rest, a line of
    the unit's own fields (its spec None), and its spec."""
    if _directory is None:
        return
    plain = _plain(unit)
    spec, plain["spec"] = plain["spec"], None
    body = json.dumps(plain, separators=(",", ":")).encode() + b"\n" + json.dumps(spec, separators=(",", ":")).encode()
    head = json.dumps({"key": key, "checksum": hashlib.sha256(body).hexdigest()}).encode()
    version = _version_dir()
    entry = version / key[:2] / f"{key}.json"
    try:
        if not version.is_dir():
            prune(_directory, version.name)
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_name(f".{entry.name}.{os.getpid()}")
        partial.write_bytes(head + b"\n" + body)
        os.replace(partial, entry)  # whole or not at all
    except OSError:  # no room, read-only: the next run resolves it again
        pass


def _version_dir() -> Path:
    """The entries of this code: a folder of their own, so that an older version's are removed whole."""
    return _directory / code_digest()[:16]


def prune(directory: Path, keep: str) -> None:
    """Remove every folder of `directory` but `keep`: the entries of other code versions (and of
    older layouts), which this code never reads. Done once, when a version first writes; a run of
    another version at the same time only finds its entries gone and makes them again."""
    try:
        for child in directory.iterdir():
            if child.name != keep and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
    except OSError:
        pass


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def decode(tp, value):
    """Plain JSON -> an instance of `tp` (frozen dataclasses, tuples, unions with None, str, int,
    float, bool), checked on the way: any other shape raises ValueError."""
    return _decoder(tp)(value)


def _fail(what: str):
    raise ValueError(f"not {what}")


@functools.cache
def _decoder(tp):
    """A decoding function for `tp`, made once per type (typing is slow to ask each time)."""
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        names = tuple(f.name for f in dataclasses.fields(tp))
        parts = tuple((name, _decoder(hints[name])) for name in names)
        expected = set(names)

        def a_dataclass(value):
            if type(value) is not dict or value.keys() != expected:
                _fail(f"a {tp.__name__}")
            return tp(**{name: part(value[name]) for name, part in parts})
        return a_dataclass
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])

        def a_tuple(value):
            if type(value) is not list:
                _fail("a list")
            return tuple(map(item, value))
        return a_tuple
    if origin is tuple:
        items = tuple(_decoder(a) for a in args)

        def a_fixed_tuple(value):
            if type(value) is not list or len(value) != len(items):
                _fail(f"a list of {len(items)}")
            return tuple(item(v) for item, v in zip(items, value))
        return a_fixed_tuple
    if origin in (types.UnionType, typing.Union):
        nullable = type(None) in args
        options = tuple(_decoder(a) for a in args if a is not type(None))

        def a_union(value):
            if value is None and nullable:
                return None
            for option in options:
                try:
                    return option(value)
                except ValueError:
                    continue
            _fail(f"one of {args}")
        return a_union
    if tp in (str, int, bool):
        def a_scalar(value):
            if type(value) is not tp:
                _fail(tp.__name__)
            return value
        return a_scalar
    raise TypeError(f"units hold no {tp!r}")
