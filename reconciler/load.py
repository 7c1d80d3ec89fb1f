"""YAML definitions with positions -> validated `Definitions`; every error located.

Each problem names `file:line:column`, the field path, and what would be valid. All files are
read and checked before anything is reported, so one run shows every problem.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from reconciler.errors import Location, Problem, Problems
from reconciler.unitcache import prune
from reconciler.gitsource import MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, Snapshot, is_definition_path
from reconciler.model import CLUSTER_ONLY_FIELDS, NAME_PATTERN, PATTERN_WORDS, Cluster, LocalState, Site

Path_ = tuple[Any, ...]  # a field path inside a document: ("node_pools", "compute", "cores")


@dataclass(frozen=True)
class Spot:
    """Where a key and its value were written."""

    key: Location
    value: Location


class Document:
    """A parsed YAML file: plain data plus the position of every key and value. The positions
    of a cached parse or a composed cluster are built when first asked for: a run without a
    problem to place never needs them (`make` builds them)."""

    __slots__ = ("path", "data", "_spots", "_make")

    def __init__(self, path: str, data: Any, make: Callable[[], dict[Path_, Spot]] | None = None):
        self.path, self.data = path, data
        self._spots: dict[Path_, Spot] | None = None
        self._make = make

    @property
    def spots(self) -> dict[Path_, Spot]:
        if self._spots is None:
            make, self._make = self._make, None
            self._spots = make() if make is not None else {}
        return self._spots


class _Spots(Mapping):
    """A document's spots as a mapping that builds them only when it is read."""

    __slots__ = ("doc",)

    def __init__(self, doc: Document):
        self.doc = doc

    def __getitem__(self, path: Path_) -> Spot:
        return self.doc.spots[path]

    def __contains__(self, path: object) -> bool:
        return path in self.doc.spots

    def __iter__(self):
        return iter(self.doc.spots)

    def __len__(self) -> int:
        return len(self.doc.spots)


@dataclass(frozen=True)
class Definitions:
    """Every site and cluster of one snapshot, validated and cross-checked."""

    sites: Mapping[str, Site]
    clusters: Mapping[str, Cluster]
    site_files: Mapping[str, str]  # site name -> its file
    cluster_files: Mapping[str, tuple[str, ...]]  # cluster name -> its file, then the profiles it composes
    files: Mapping[str, bytes]
    cluster_spots: Mapping[str, Mapping[Path_, Spot]] = field(default_factory=dict)  # where each field was set
    site_spots: Mapping[str, Mapping[Path_, Spot]] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()  # files under sites/ and clusters/ that are not definitions (README.md)

    def locate_site(self, site: str, path: Path_) -> Location:
        """Where a site's field was written; the file's top if unknown."""
        spots = self.site_spots.get(site, {})
        return _spot_at(spots, path, Location(self.site_files[site], 1, 1))

    def locate(self, cluster: str, path: Path_) -> Location:
        """Where a cluster's field was written (in its file or a profile); the file's top if unknown."""
        return _spot_at(self.cluster_spots.get(cluster, {}), path, Location(self.cluster_files[cluster][0], 1, 1))


def _spot_at(spots: Mapping[Path_, Spot], path: Path_, top: Location) -> Location:
    """The key of the deepest field of `path` that was written, else `top`."""
    while path and path not in spots:
        path = path[:-1]
    return spots[path].key if path else top


# What a definition may be, checked before anything is built from it: every pull request's
# plan job reads definitions that anyone with a fork can write. The README states them.
# MAX_FILES and MAX_FILE_BYTES are gitsource's: it reads no more than they allow
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_VALUES = 5_000  # values in one file once its aliases are expanded (the examples hold under 300)
MAX_EXPANDED = 2 << 20  # characters of a file's strings once its aliases are expanded: twice what a file holds
MAX_STRING = 64 << 10  # characters in one string


# The tags YAML gives plain values; any other (`!!python/...`, `!custom`) is refused unbuilt.
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp"))


class _Refused(Exception):
    def __init__(self, why: str, node: Node):
        super().__init__(why)
        self.node = node


def load(snapshot: Snapshot) -> Definitions:
    """Parse, compose and validate a snapshot. Raises InvalidDefinitions with every problem."""
    problems = Problems()
    count = sum(1 for path in snapshot.files if is_definition_path(path))
    if count > MAX_FILES:
        problems.add(
            Location("sites/ and clusters/"), "", f"{count:,} definition files, more than the limit of {MAX_FILES:,}; none was read",
            "split the repository, or remove definitions that are not used",
        )
        problems.raise_if_any()
    if snapshot.total_bytes:
        problems.add(
            Location("sites/ and clusters/"), "",
            f"{snapshot.total_bytes:,} bytes of definitions, more than the limit of {MAX_TOTAL_BYTES:,}; none was read",
            "split the repository, or remove definitions that are not used",
        )
        problems.raise_if_any()
    for path, size in sorted(snapshot.oversize.items()):
        problems.add(Location(path), "", f"{size:,} bytes, more than the limit of {MAX_FILE_BYTES:,} for a definition file; not read")
    for path in snapshot.specials:
        problems.add(Location(path), "", "not a regular file (a FIFO, socket or device): definitions are regular files; not opened",
                     "remove it from sites/ and clusters/")
    for path in snapshot.links:
        problems.add(
            Location(path), "", "a symbolic link: definitions must be regular files, and links are never followed",
            "replace the link with the file itself",
        )
    for path in snapshot.others:
        suffix = PurePosixPath(path).suffix
        if suffix.lower() in (".yaml", ".yml", ".json"):  # meant as a definition, surely: say why it is not one
            problems.add(
                Location(path, 1, 1), "", f"this file is not read: definitions end in .yaml or .yml, in lower case, not {suffix}",
                f"rename it to {PurePosixPath(path).with_suffix('.yaml').as_posix()}"
                + ("; YAML reads JSON as it is" if suffix == ".json" else ""),
            )
    for path in sorted(snapshot.files):
        if not is_definition_path(path):
            problems.add(
                Location(path, 1, 1),
                "",
                "this file is not read: definitions live in sites/*.yaml, clusters/*.yaml and clusters/profiles/*.yaml",
                "move it there, or out of sites/ and clusters/",
            )
    docs = {
        path: doc
        for path, raw in sorted(snapshot.files.items())
        if is_definition_path(path) and path not in snapshot.oversize and (doc := _parse_cached(path, raw, problems))
    }

    profiles = {PurePosixPath(p).stem: d for p, d in docs.items() if p.startswith("clusters/profiles/")}
    for doc in profiles.values():
        _check_profile(doc, problems)

    site_docs = [d for p, d in docs.items() if p.startswith("sites/")]
    cluster_docs = [d for p, d in docs.items() if p.startswith("clusters/") and not p.startswith("clusters/profiles/")]
    # Names and references are checked on the raw documents, so that a file with another
    # error still takes part and one run reports everything.
    _check_unique("site", site_docs, problems)
    _check_unique("cluster", cluster_docs, problems)
    for doc in site_docs + cluster_docs:
        _check_file_name(doc, problems)
    site_names = {d.data["name"] for d in site_docs if isinstance(d.data.get("name"), str)}
    for doc in cluster_docs:
        _check_sites(doc, site_names, problems)

    sites: dict[str, Site] = {}
    site_files: dict[str, str] = {}
    site_spots: dict[str, Mapping[Path_, Spot]] = {}
    for doc in site_docs:
        spots = _Spots(doc)
        site = _validate(Site, doc.data, spots, Location(doc.path, 1, 1), problems)
        if site is not None and site.name not in sites:
            sites[site.name] = site
            site_files[site.name] = doc.path
            site_spots[site.name] = spots
    _check_sites_apart(sites, site_spots, problems)

    clusters: dict[str, Cluster] = {}
    cluster_files: dict[str, tuple[str, ...]] = {}
    cluster_spots: dict[str, Mapping[Path_, Spot]] = {}
    for doc in cluster_docs:
        composed = _compose(doc, profiles, problems)
        if composed is None:
            continue
        spots = _Spots(composed)
        cluster = _validate(Cluster, composed.data, spots, Location(doc.path, 1, 1), problems)
        if cluster is not None and cluster.name not in clusters:
            clusters[cluster.name] = cluster
            cluster_files[cluster.name] = (doc.path, *(profiles[p].path for p in cluster.profiles))
            cluster_spots[cluster.name] = spots
    for name, cluster in clusters.items():
        _check_zone(cluster, sites.get(cluster.placement.site), cluster_spots[name], problems)
    if problems:  # the run stops here: say now, too, what the valid clusters' sites cannot run
        from reconciler.resolve import placement_problems  # (resolve builds on this module)

        for name, cluster in clusters.items():
            if (site := sites.get(cluster.placement.site)) is not None:
                top = Location(cluster_files[name][0], 1, 1)
                locate = lambda path, spots=cluster_spots[name], top=top: _spot_at(spots, path, top)  # noqa: E731
                problems.extend(placement_problems(cluster, site, locate)[1])

    problems.raise_if_any()
    return Definitions(
        sites=dict(sorted(sites.items())),
        clusters=dict(sorted(clusters.items())),
        site_files=site_files,
        cluster_files=cluster_files,
        files=snapshot.files,
        cluster_spots=cluster_spots,
        site_spots=site_spots,
        ignored=snapshot.others,
    )


# ---------------------------------------------------------------- the parse cache

# Parsing is most of a run that has nothing to do (ruamel's round trip: ~17 ms a file), so a
# file's parse (its plain data and the place of every field) is kept by content, under the
# work directory: a file is parsed again only when its bytes change. The key covers the path,
# the bytes, this module's own source and ruamel's version, so new code never reads an old
# entry. An entry that does not read back as one (damaged, cut short, another file's) is
# ignored and written again: it is never trusted. Only a parse without problems is kept.
_cache_dir: Path | None = None
_code_hash = ""


def use_cache(directory: Path | None) -> None:
    """Keep parses in `directory` (None: parse every file, keep nothing)."""
    global _cache_dir, _code_hash
    _cache_dir = directory
    if directory is not None and not _code_hash:
        import ruamel.yaml

        _code_hash = hashlib.sha256(Path(__file__).read_bytes() + ruamel.yaml.__version__.encode()).hexdigest()


def _parse_cached(path: str, raw: bytes, problems: Problems) -> Document | None:
    if _cache_dir is None:
        return _parse(path, raw, problems)
    key = hashlib.sha256(b"\0".join((_code_hash.encode(), path.encode(), raw))).hexdigest()
    entry = _cache_dir / _code_hash[:16] / key[:2] / f"{key}.json"
    doc = _cached(entry, key, path, raw)
    if doc is not None:
        return doc
    before = len(problems.items)
    doc = _parse(path, raw, problems)
    if doc is not None and len(problems.items) == before:
        try:
            body = json.dumps({"key": key, "path": path, "data": doc.data,
                               "spots": [[list(at), s.key.line, s.key.column, s.value.line, s.value.column] for at, s in doc.spots.items()]},
                              separators=(",", ":"), allow_nan=False).encode()
            if not entry.parent.parent.is_dir():  # this loader's first entry: the older loaders' go
                prune(_cache_dir, entry.parent.parent.name)
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_name(f".{entry.name}.{os.getpid()}")
            partial.write_bytes(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
            os.replace(partial, entry)  # whole or not at all, whoever else writes it
        except (OSError, TypeError, ValueError):  # a value JSON does not hold (a date), or no room: not kept
            pass
    return doc


def _cached(entry: Path, key: str, path: str, raw: bytes) -> Document | None:
    """An entry is its checksum, a newline and its JSON: one cut or damaged is not read. Its
    spots are decoded when first asked for; spots of a shape no parse writes (a foreign entry)
    are taken from the file itself."""
    try:
        checksum, _, body = entry.read_bytes().partition(b"\n")
        if hashlib.sha256(body).hexdigest().encode() != checksum:
            return None
        stored = json.loads(body)
        if stored["key"] != key or stored["path"] != path or not isinstance(stored["data"], dict) or not isinstance(stored["spots"], list):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = stored["spots"]

    def spots() -> dict[Path_, Spot]:
        try:
            made = {}
            for at, kl, kc, vl, vc in rows:
                if not (type(kl) is type(kc) is type(vl) is type(vc) is int) or type(at) is not list:
                    raise TypeError
                made[tuple(at)] = Spot(Location(path, kl, kc), Location(path, vl, vc))
            if any(p not in made for p in _paths(stored["data"], ())):
                raise ValueError  # spots that do not cover the data: not this file's parse
            return made
        except (TypeError, ValueError):
            parsed = _parse(path, raw, Problems())
            return parsed.spots if parsed is not None else {}

    return Document(path, stored["data"], spots)


# ---------------------------------------------------------------- parsing


def _parse(path: str, raw: bytes, problems: Problems) -> Document | None:
    if len(raw) > MAX_FILE_BYTES:
        problems.add(Location(path), "", f"{len(raw):,} bytes, more than the limit of {MAX_FILE_BYTES:,} for a definition file; not read")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.add(Location(path, line, column), "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    yaml = YAML(typ="rt")
    try:
        _count_events(yaml, text)  # cheap, and first: a million tiny values is refused unbuilt
        composed = yaml.compose(text)  # nodes only: aliases are shared, nothing is expanded yet
        if composed is not None:
            _measure(composed, 1, {}, yaml.constructor)
        node = yaml.constructor.construct_document(composed) if composed is not None else None
    except _Refused as exc:
        mark = exc.node.start_mark
        problems.add(Location(path, mark.line + 1, mark.column + 1), "", f"{exc}; not read")
        return None
    except RecursionError:
        problems.add(Location(path), "", f"nested too deep to read (the limit is {MAX_DEPTH} levels); not read")
        return None
    except (ValueError, TypeError, KeyError, AssertionError, OverflowError, AttributeError) as exc:
        # what ruamel's constructor raises for a value it cannot build (`!!int abc`, an impossible
        # date, an integer of thousands of digits, a YAML version it does not read)
        # (values are checked one by one first, with their place: what is left is the document's head)
        problems.add(Location(path, 1, 1), "", f"malformed YAML: {str(exc)[:200] or type(exc).__name__}")
        return None
    except ReaderError as exc:  # a character YAML does not allow (NUL, ...): at its place
        before = text[: exc.position]
        where = Location(path, before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        char = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
        problems.add(where, "", f"malformed YAML: the character {char!r} (U+{ord(char[:1] or ' '):04X}) is not allowed in YAML text")
        return None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problems.add(where, "", f"malformed YAML: {message}")
        return None
    except YAMLError as exc:
        problems.add(Location(path), "", f"malformed YAML: {exc}")
        return None
    if not isinstance(node, CommentedMap):
        kind = "empty" if node is None else "a list" if isinstance(node, list) else f"a single value ({type(node).__name__.lower().removeprefix('scalar')})"
        problems.add(Location(path, 1, 1), "", f"expected a mapping of fields at the top level, got {kind}")
        return None
    doc = Document(path, None)
    doc.data = _plain(node, (), doc, problems)
    return doc


class _At:
    """Where a streaming event is: what _Refused reports."""

    def __init__(self, mark):
        self.start_mark = mark


def _count_events(yaml: YAML, text: str) -> None:
    """Count the parser's events (values, mappings, lists; an alias once) and their nesting,
    and stop at the first bound crossed: parsing a million tiny values would cost tens of
    seconds, composing them more."""
    from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, NodeEvent

    count = depth = 0
    for event in yaml.parse(text):
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", _At(event.start_mark))
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
        if isinstance(event, NodeEvent):
            count += 1
            if count > MAX_VALUES:
                raise _Refused(f"more than {MAX_VALUES:,} values (the limit)", _At(event.start_mark))


_BUILT_SCALARS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "timestamp"))


def _measure(node: Node, depth: int, memo: dict[int, tuple[int, int, int]], constructor=None) -> tuple[int, int, int]:
    """(values, height, characters) below a composed node, aliases counted at every use, in
    time linear in the composed graph (an alias is a shared node: measured once). Raises
    _Refused at the first bound crossed, before anything is expanded."""
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels", node)
    known = memo.get(id(node))
    if known is None:
        if node.tag and node.tag not in _PLAIN_TAGS:
            raise _Refused(f"a YAML tag {node.tag!r}: definitions hold plain values only, no tags", node)
        chars = 0
        if isinstance(node, ScalarNode):
            if len(node.value) > MAX_STRING:
                raise _Refused(f"a string of {len(node.value):,} characters, more than the limit of {MAX_STRING:,}", node)
            if constructor is not None and node.tag in _BUILT_SCALARS:
                try:  # `!!int abc`, an impossible date, an integer of thousands of digits: said here, with its place
                    constructor.construct_object(node)
                except (ValueError, TypeError, KeyError, OverflowError, AttributeError) as exc:
                    raise _Refused(f"malformed YAML: a value that cannot be read ({str(exc)[:160]})", node) from None
            children, chars = [], len(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        else:
            children = []
        memo[id(node)] = (1, MAX_DEPTH + 1, 0)  # reached again while measuring it: a recursive alias
        values, height = 1, 1
        for child in children:
            size, tall, text = _measure(child, depth + 1, memo, constructor)
            values, height, chars = values + size, max(height, tall + 1), chars + text
            if values > MAX_VALUES:
                raise _Refused(f"more than {MAX_VALUES:,} values once its aliases are expanded (the limit)", node)
            if chars > MAX_EXPANDED:
                raise _Refused(f"more than {MAX_EXPANDED:,} characters of strings once its aliases are expanded (the limit)", node)
        known = memo[id(node)] = (values, height, chars)
    if depth + known[1] - 1 > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels", node)
    return known


def _plain(node: Any, at: Path_, doc: Document, problems: Problems) -> Any:
    """ruamel's round-trip nodes -> plain Python, recording positions on the way. A key that
    is not a string (`true:`, `3:`, `? [a]`) is reported where it is written, and left out."""
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            try:
                (kl, kc), (vl, vc) = node.lc.key(key), node.lc.value(key)
            except (KeyError, TypeError):  # a key merged in (`<<: *defaults`) is where the mapping is
                kl, kc = vl, vc = node.lc.line, node.lc.col
            if not isinstance(key, str):
                problems.add(Location(doc.path, kl + 1, kc + 1), _dotted(at), *_not_a_string_key(key))
                continue
            doc.spots[at + (key,)] = Spot(Location(doc.path, kl + 1, kc + 1), Location(doc.path, vl + 1, vc + 1))
            out[key] = _plain(value, at + (key,), doc, problems)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for index, value in enumerate(node):
            try:
                line, col = node.lc.item(index)
            except (KeyError, TypeError):
                line, col = node.lc.line, node.lc.col
            spot = Location(doc.path, line + 1, col + 1)
            doc.spots[at + (index,)] = Spot(spot, spot)
            out_list.append(_plain(value, at + (index,), doc, problems))
        return out_list
    for plain in (bool, int, float, str):  # ruamel's ScalarFloat, ScalarString, ... -> built-ins
        if isinstance(node, plain):
            return plain(node)
    return node


def _not_a_string_key(key: Any) -> tuple[str, str]:
    """(message, hint) for a mapping key that YAML read as something other than a string."""
    quote = "put the key in quotes, as it is written: only then is it read as text"
    if isinstance(key, bool) or key is None:
        return f"a key must be a string; this one is read as {'no value' if key is None else f'the boolean {str(key).lower()}'}", quote
    if isinstance(key, (int, float)):
        return f"a key must be a string; this one is read as the number {key!r}", quote
    kind = "a list" if isinstance(key, tuple) else "a mapping" if isinstance(key, Mapping) else f"a {type(key).__name__}"
    return f"a key must be a string, not {kind}", quote if kind in ("a date", "a datetime") else "keys are names: write one plain name"


# ---------------------------------------------------------------- composition


def _check_profile(doc: Document, problems: Problems) -> None:
    """A profile is a partial cluster: check what it sets, not what it leaves to the cluster."""
    for key in CLUSTER_ONLY_FIELDS:
        if key in doc.data:
            problems.add(
                doc.spots[(key,)].key,
                key,
                "a profile cannot set this field",
                f"{', '.join(CLUSTER_ONLY_FIELDS)} belong in the cluster file",
            )
    data = {k: v for k, v in doc.data.items() if k not in CLUSTER_ONLY_FIELDS}
    _validate(Cluster, data, doc.spots, Location(doc.path, 1, 1), problems, partial=True)


def _compose(doc: Document, profiles: Mapping[str, Document], problems: Problems) -> Document | None:
    """Deep-merge the profiles a cluster names (in order), then the cluster file on top."""
    names = doc.data.get("profiles", [])
    if not isinstance(names, list):
        return doc  # validation reports the wrong type
    layers, ok = [], True
    for index, name in enumerate(names):
        profile = profiles.get(name) if isinstance(name, str) else None
        if profile is None:
            problems.add(
                doc.spots[("profiles", index)].value,
                f"profiles[{index}]",
                f"unknown profile {name!r}",
                _choices("profiles in clusters/profiles/", name, profiles),
            )
            ok = False
            continue
        layers.append(profile)
    if not ok:
        return None
    layers.append(doc)
    data: dict = {}
    for layer in layers:
        _merge_data(data, layer.data)

    def spots() -> dict[Path_, Spot]:
        merged = Document(doc.path, {})
        for layer in layers:
            _merge_into(merged, layer, (), layer.data, merged.data)
        return merged.spots

    return Document(doc.path, data, spots)


def _merge_data(dest: dict, source: dict) -> None:
    """The data of _merge_into alone: a mapping merges into a mapping, anything else replaces."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(dest.get(key), dict):
            _merge_data(dest[key], value)
        else:
            dest[key] = _copy(value)


def _merge_into(target: Document, layer: Document, at: Path_, source: dict, dest: dict) -> None:
    for key, value in source.items():
        here = at + (key,)
        if isinstance(value, dict) and isinstance(dest.get(key), dict):
            target.spots[here] = layer.spots[here]
            _merge_into(target, layer, here, value, dest[key])
            continue
        if key in dest:  # the earlier layer's value is replaced whole
            for stale in _paths(dest[key], here):
                target.spots.pop(stale, None)
        target.spots[here] = layer.spots[here]
        target.spots.update((p, layer.spots[p]) for p in _paths(value, here))
        dest[key] = _copy(value)


def _paths(value: Any, at: Path_):
    """The paths below a value: spots mirror the data, one per mapping key and list item, so
    a merge touches only what it replaces (linear, not a scan of every spot per key)."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield at + (key,)
        yield from _paths(child, at + (key,))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# ---------------------------------------------------------------- validation


MAX_PROBLEMS_PER_FILE = 50  # past these, one line says how many more: a screenful, not 5,000


def _validate(model, data, spots, top: Location, problems: Problems, partial: bool = False):
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [e for e in exc.errors(include_url=False) if not (partial and e["type"] == "missing")]
        errors = _typos_of_required(errors)
        for error in errors[:MAX_PROBLEMS_PER_FILE]:
            problems.extend([_problem(model, data, spots, top, error)])
        if len(errors) > MAX_PROBLEMS_PER_FILE:
            problems.add(top, "", f"and {len(errors) - MAX_PROBLEMS_PER_FILE:,} more problems in this file, not listed")
        return None


def _typos_of_required(errors: list[dict]) -> list[dict]:
    """A misspelled required field is one problem, not two: the unknown key that is close to a
    missing field beside it absorbs that field's "missing" (its hint says it is required)."""
    missing = {(tuple(e["loc"][:-1]), e["loc"][-1]): e for e in errors if e["type"] == "missing"}
    if not missing:
        return errors
    absorbed = set()
    for error in errors:
        if error["type"] != "extra_forbidden":
            continue
        parent = tuple(error["loc"][:-1])
        names = [name for (at, name) in missing if at == parent and (at, name) not in absorbed]
        close = difflib.get_close_matches(str(error["loc"][-1]), names, n=1)
        if close:
            absorbed.add((parent, close[0]))
            error["required_typo"] = close[0]
    return [e for e in errors if not (e["type"] == "missing" and (tuple(e["loc"][:-1]), e["loc"][-1]) in absorbed)]


def _problem(model, data, spots: Mapping[Path_, Spot], top: Location, error: Mapping) -> Problem:
    loc = error["loc"]
    present = _present_path(data, loc)
    field_path = _dotted(present if len(present) == len(loc) or error["type"] != "missing" else present + (loc[-1],))
    kind = error["type"]
    if kind == "extra_forbidden":
        spot = spots.get(present)
        valid = _fields_at(model, loc[:-1])
        if "required_typo" in error:
            hint = f"did you mean {error['required_typo']!r}? It is required; valid fields: {', '.join(sorted(valid))}"
        else:
            hint = _choices("valid fields", loc[-1], valid)
        return Problem(spot.key if spot else top, field_path, f"unknown field {loc[-1]!r}", hint)
    if kind == "missing":
        spot = spots.get(present)
        parent = spot.key if spot else top
        valid = _fields_at(model, loc[:-1])
        hint = f"required; other fields here: {', '.join(sorted(set(valid) - {loc[-1]}))}" if valid else "required"
        return Problem(parent, field_path, "missing required field", hint)
    spot = spots.get(present)
    where = spot.value if spot else top
    message = error["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch" and (words := PATTERN_WORDS.get((error.get("ctx") or {}).get("pattern"))):
        message = f"should be {words}"
    if kind not in ("value_error", "assertion_error") and "input" in error and not isinstance(error["input"], (dict, list)):
        given = error["input"]
        message += f", got {ascii(given) if isinstance(given, str) and not given.isascii() else repr(given)}"  # a confusable shows
    if kind == "literal_error" and isinstance(error.get("input"), str):  # a misspelled choice: say which was meant
        expected = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        near = difflib.get_close_matches(error["input"], expected, n=1)
        if near:
            return Problem(where, field_path, message, f"did you mean {near[0]!r}?")
    return Problem(where, field_path, message)


def _present_path(data: Any, loc: tuple) -> Path_:
    """The prefix of a pydantic error location that exists in the data (union tags skipped)."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            out.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and node.get("backend") == part:
            continue  # a discriminated-union tag, not a key
        else:
            break
    return tuple(out)


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(model, loc: tuple) -> list[str]:
    """Field names of the model found at a location, for 'valid fields: ...' hints."""
    candidates = [model]
    for part in loc:
        nxt = []
        for candidate in candidates:
            for t in _unwrap(candidate):
                if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
                    if part in t.model_fields:
                        nxt.append(t.model_fields[part].annotation)
                    elif any(_tag(m) == part for m in _unwrap(candidate)):
                        nxt.append(t) if _tag(t) == part else None
                elif typing.get_origin(t) in (dict, list):
                    nxt.append(typing.get_args(t)[-1])
        candidates = nxt
    names: list[str] = []
    for candidate in candidates:
        for t in _unwrap(candidate):
            if isinstance(t, type) and issubclass(t, pydantic.BaseModel):
                names.extend(n for n in t.model_fields if n not in names)
    return names


def _unwrap(t) -> list:
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(t)[0])
    if origin in (typing.Union, types.UnionType):
        return [u for arg in typing.get_args(t) for u in _unwrap(arg)]
    return [t]


def _tag(model) -> str | None:
    field_info = getattr(model, "model_fields", {}).get("backend")
    if field_info is None:
        return None
    args = typing.get_args(field_info.annotation)
    return args[0] if args else None


def _choices(label: str, given: Any, valid) -> str:
    valid = sorted(valid)
    if not valid:
        return f"no {label} are defined"
    close = difflib.get_close_matches(str(given), valid, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return f"{label}: {', '.join(valid)}{suggestion}"


# ---------------------------------------------------------------- cross-file checks


def _check_unique(kind: str, docs: list[Document], problems: Problems) -> None:
    seen: dict[str, Document] = {}
    for doc in docs:
        name = doc.data.get("name")
        if not isinstance(name, str):
            continue
        first = seen.setdefault(name, doc)
        if first is doc:
            continue
        for here, other in ((first, doc), (doc, first)):
            problems.add(
                here.spots[("name",)].value,
                "name",
                f"{kind} name {name!r} is defined twice",
                f"also in {other.spots[('name',)].value}; names must be unique",
            )


def _check_sites(doc: Document, site_names: set[str], problems: Problems) -> None:
    placement = doc.data.get("placement")
    failover = doc.data.get("failover")
    refs = []
    if isinstance(placement, dict) and isinstance(placement.get("site"), str):
        refs.append((("placement", "site"), placement["site"]))
    if isinstance(failover, list):
        refs += [(("failover", i), name) for i, name in enumerate(failover) if isinstance(name, str)]
    for at, name in refs:
        if name not in site_names:
            problems.add(doc.spots[at].value, _dotted(at), f"unknown site {name!r}", _choices("sites", name, site_names))


def _check_file_name(doc: Document, problems: Problems) -> None:
    """`sites/x.yaml` defines `name: x`: one name for the file a person opens and the unit it makes."""
    name = doc.data.get("name")
    stem = PurePosixPath(doc.path).stem
    if isinstance(name, str) and name != stem:
        valid = re.compile(NAME_PATTERN)
        fixes = []  # only what would be valid: a name (or file name) the name pattern takes
        if valid.match(name):
            fixes.append(f"rename the file to {name}{PurePosixPath(doc.path).suffix}")
        if valid.match(stem):
            fixes.append(f"set name: {stem}")
        hint = " or ".join(fixes) or "name the file and the definition alike, in lower-case letters, digits and '-'"
        problems.add(
            doc.spots[("name",)].value,
            "name",
            f"name {ascii(name) if not name.isascii() else repr(name)} differs from the file name "
            f"{ascii(PurePosixPath(doc.path).name) if not doc.path.isascii() else repr(PurePosixPath(doc.path).name)}",
            hint,
        )


def _check_zone(cluster: Cluster, site: Site | None, spots: Mapping[Path_, Spot], problems: Problems) -> None:
    zone = cluster.placement.zone
    if site is None or zone is None or zone in site.zones:
        return
    where = spots[("placement", "zone")].value
    problems.add(where, "placement.zone", f"zone {zone!r} is not a zone of site {site.name}", _choices("zones", zone, site.zones))


def state_namespace(site: Site) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the store, the path inside it) of a site's state, normalized: two sites collide when
    their stores are the same and one path is the other or lies inside it."""
    state = site.state
    if isinstance(state, LocalState):
        return ("local",), tuple(state.directory.split("/"))
    return (state.backend, (state.endpoint or "").rstrip("/"), state.bucket), tuple(p for p in state.directory.split("/") if p)


def _state_field(site: Site) -> Path_:
    return ("state", {"local": "path", "gcs": "prefix", "s3": "key_prefix"}[site.state.backend])


def _describe_state(site: Site) -> str:
    state = site.state
    if isinstance(state, LocalState):
        return f"local directory {state.directory}"
    scheme = "gs" if state.backend == "gcs" else "s3"
    at = f" at {state.endpoint}" if state.endpoint else ""
    return f"{scheme}://{state.bucket}/{state.directory}{at}"


def _check_sites_apart(sites: Mapping[str, Site], spots: Mapping[str, Mapping[Path_, Spot]], problems: Problems) -> None:
    """Sites never share state or address space: either would let one site's apply change, or
    destroy, another's resources, and clusters could not move between overlapping networks."""
    ordered = sorted(sites.values(), key=lambda s: s.name)
    for i, one in enumerate(ordered):
        for other in ordered[i + 1 :]:
            (store_a, path_a), (store_b, path_b) = state_namespace(one), state_namespace(other)
            shorter = min(len(path_a), len(path_b))
            if store_a == store_b and path_a[:shorter] == path_b[:shorter]:
                for here, there in ((one, other), (other, one)):
                    where = _spot_at(spots[there.name], _state_field(there), Location("", 0, 0))
                    if path_a == path_b:
                        relation = f"the same place as site {there.name}'s ({where})"
                    else:
                        relation = f"nested with site {there.name}'s {_describe_state(there)} ({where})"
                    problems.add(
                        _spot_at(spots[here.name], _state_field(here), Location("", 0, 0)),
                        ".".join(_state_field(here)),
                        f"site {here.name} keeps its state in {_describe_state(here)}, {relation}",
                        "every site needs a state location of its own: sharing one lets a site's apply change or destroy another's stacks",
                    )
            net_a, net_b = ipaddress.IPv4Network(one.network.cidr), ipaddress.IPv4Network(other.network.cidr)
            if net_a.overlaps(net_b):
                for here, there, net in ((one, other, net_b), (other, one, net_a)):
                    problems.add(
                        spots[here.name][("network", "cidr")].value,
                        "network.cidr",
                        f"{here.network.cidr} overlaps site {there.name}'s {net}",
                        f"{spots[there.name][('network', 'cidr')].value}; site networks must be disjoint so clusters can move between them",
                    )
