"""ADAPTER over git: definition files at a revision or in the working tree, and merge-bases.

Only this module talks to git. Everything downstream sees a `Snapshot`: a pure mapping of
repository-relative paths to file contents.
"""

from __future__ import annotations

import hashlib
import os
import stat

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import git

from reconciler.errors import GitError

DEFINITION_DIRS = ("sites", "clusters")
MAX_FILES = 2000  # definition files in one snapshot: past it, none is read
MAX_FILE_BYTES = 1 << 20  # one file: past it, only this much is read (the loader refuses it)
MAX_TOTAL_BYTES = 16 << 20  # all definition files together: past it, none is read (a thousand clusters take ~2 MiB)
YAML_SUFFIXES = (".yaml", ".yml")


def tracks(root: Path, path: Path) -> bool:
    """Whether git tracks anything under `path` in the repository at `root`, read from its index
    (no process started): a path outside the repository, or no repository, is tracked by nothing.
    An index git writes with prefix compression (version 4) is asked of git itself."""
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return False
    dot_git = root / ".git"
    if dot_git.is_file():  # a worktree or a submodule: `gitdir: DIR`
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
        dot_git = (root / text.removeprefix("gitdir:").strip()).resolve()
    try:
        index = (dot_git / "index").read_bytes()
    except FileNotFoundError:
        return False
    if index[:4] == b"DIRC" and int.from_bytes(index[4:8], "big") in (2, 3):
        return (rel + "/").encode() in index  # a path inside it; a false match only turns caches off
    try:
        return bool(git.Repo(root).git.ls_files("--", rel).strip())
    except (git.InvalidGitRepositoryError, git.GitCommandError):
        return True


def _parts(path: str) -> list[str]:
    """PurePosixPath(path).parts of a relative path, by string operations (a thousand files a run)."""
    return [part for part in path.split("/") if part not in ("", ".")]


def is_definition_path(path: str) -> bool:
    """sites/*.yaml, clusters/*.yaml and clusters/profiles/*.yaml."""
    parts = _parts(path)
    if not path.endswith(YAML_SUFFIXES):
        return False
    if len(parts) == 2 and parts[0] in DEFINITION_DIRS:
        return True
    return len(parts) == 3 and parts[0] == "clusters" and parts[1] == "profiles"


SYMLINK_MODE = 0o120000  # a tree entry that is a symbolic link


def _hidden(path: str) -> bool:
    """A dot file or folder (.gitkeep, an editor's .x.yaml.swp): not a definition, not worth a word."""
    return any(part.startswith(".") for part in _parts(path))


def is_yaml_under_definitions(path: str) -> bool:
    """Any YAML file below sites/ or clusters/: what a snapshot holds, so that a file in a
    folder that is not read is reported instead of silently ignored."""
    parts = _parts(path)
    return path.endswith(YAML_SUFFIXES) and len(parts) >= 2 and parts[0] in DEFINITION_DIRS


@dataclass(frozen=True)
class Snapshot:
    """The definition files of one revision (or of the working tree)."""

    label: str  # what a person reads: "working tree", "main (1a2b3c4)", ...
    revision: str | None  # the commit, or HEAD's commit for the working tree; None outside git
    dirty: bool  # the working tree differs from `revision`
    files: Mapping[str, bytes]
    links: tuple[str, ...] = ()  # symbolic links under sites/ or clusters/: never followed, refused
    others: tuple[str, ...] = ()  # other files there (README.md, x.YAML, x.json): never read, named
    oversize: Mapping[str, int] = field(default_factory=dict)  # definition files past MAX_FILE_BYTES: their size
    specials: tuple[str, ...] = ()  # FIFOs, sockets, devices: never opened, refused
    total_bytes: int = 0  # of the definition files, when past MAX_TOTAL_BYTES (then none was read)


class GitSource:
    """Reads definitions from a repository root, through git where there is one."""

    def __init__(self, root: Path):
        self.root = root
        try:
            self.repo: git.Repo | None = git.Repo(root, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            self.repo = None

    # -- revisions

    def resolve(self, ref: str) -> str:
        if self.repo is None:
            raise GitError(f"{self.root} is not a git repository, so revision {ref!r} cannot be read")
        try:
            return self.repo.commit(ref).hexsha
        except (git.BadName, ValueError, git.GitCommandError) as exc:
            raise GitError(f"unknown revision {ref!r} in {self.root}: {exc}") from None

    def head(self) -> str | None:
        if self.repo is None or not self.repo.head.is_valid():
            return None
        return self.repo.head.commit.hexsha

    def default_base(self) -> str | None:
        """The merge-base of HEAD with main (or origin/main); None when there is none."""
        head = self.head()
        if head is None:
            return None
        for ref in ("main", "origin/main"):
            try:
                other = self.repo.commit(ref)
            except (git.BadName, ValueError, git.GitCommandError):
                continue
            bases = self.repo.merge_base(head, other)
            if bases:
                return bases[0].hexsha
        return None

    def merge_base(self, ref: str) -> str:
        head = self.head()
        other = self.resolve(ref)
        if head is None:
            return other
        bases = self.repo.merge_base(head, other)
        if not bases:
            raise GitError(f"{ref!r} and HEAD have no common ancestor")
        return bases[0].hexsha

    def removed_sites(self, rev: str | None = None) -> dict[str, bytes]:
        """Every site file deleted in the history of `rev` (default HEAD), at its last version
        before the deletion: where a removed site kept its state, so its stacks are found
        whatever runs were skipped since. {path: content}; a path deleted twice counts once,
        at its latest deletion."""
        if self.repo is None or (rev is None and self.head() is None):
            return {}
        try:
            log = self.repo.git.log(rev or "HEAD", "--diff-filter=D", "--format=%x00%H", "--name-only", "--", "sites/")
        except git.GitCommandError as exc:
            raise GitError(f"cannot read the history of sites/: {exc}") from None
        found: dict[str, bytes] = {}
        for entry in log.split("\x00")[1:]:
            sha, *paths = [line for line in entry.splitlines() if line.strip()]
            parent = self.repo.commit(sha).parents
            for path in paths:
                if path in found or not parent or not is_definition_path(path):
                    continue
                try:
                    blob = parent[0].tree / path
                except KeyError:
                    continue
                if blob.size <= MAX_FILE_BYTES:  # a removed file past the bound is never read, as any other
                    found[path] = blob.data_stream.read()
        return found

    # -- snapshots

    def at_revision(self, rev: str) -> Snapshot:
        sha = self.resolve(rev)
        commit = self.repo.commit(sha)
        blobs: dict = {}
        links: list[str] = []
        others: list[str] = []
        for top in DEFINITION_DIRS:
            try:
                tree = commit.tree / top
            except KeyError:
                continue
            for item in tree.traverse():
                if item.type != "blob" or _hidden(item.path):
                    continue
                if item.mode == SYMLINK_MODE:  # committed as a link: its text is a path, not a definition
                    links.append(item.path)
                elif is_yaml_under_definitions(item.path):
                    blobs[item.path] = item
                else:
                    others.append(item.path)
        oversize = {path: blob.size for path, blob in blobs.items() if blob.size > MAX_FILE_BYTES}
        total = sum(blob.size for path, blob in blobs.items() if path not in oversize)  # what would be read
        if len(blobs) <= MAX_FILES and total <= MAX_TOTAL_BYTES:  # past a bound, none is read: the loader refuses it
            files = {path: b"" if path in oversize else blob.data_stream.read() for path, blob in blobs.items()}
        else:
            files = dict.fromkeys(blobs, b"")
        label = rev if rev == sha else f"{rev} ({sha[:7]})"
        return Snapshot(label=label, revision=sha, dirty=False, files=files, links=tuple(sorted(links)),
                        others=tuple(sorted(others)), oversize=oversize, total_bytes=total if total > MAX_TOTAL_BYTES else 0)

    def _committed(self, head: str, files: dict[str, bytes], oversize: bool) -> bool:
        """Whether `files` are the definitions committed at `head`: compared by git's blob ids,
        without reading a blob (a file past the size limit is compared by reading them)."""
        if oversize:
            return files == self.at_revision(head).files
        committed = {}
        commit = self.repo.commit(head)
        for top in DEFINITION_DIRS:
            try:
                tree = commit.tree / top
            except KeyError:
                continue
            for item in tree.traverse():
                if item.type == "blob" and not _hidden(item.path) and item.mode != SYMLINK_MODE and is_yaml_under_definitions(item.path):
                    committed[item.path] = item.binsha
        if committed.keys() != files.keys():
            return False
        return all(hashlib.sha1(b"blob %d\0%s" % (len(raw), raw)).digest() == committed[path] for path, raw in files.items())

    def working_tree(self) -> Snapshot:
        """The definitions as they are on disk. A symbolic link is never followed (it could
        reach any file of the machine): it is listed in `links`, and refused by the loader."""
        files: dict[str, bytes] = {}
        oversize: dict[str, int] = {}
        candidates: list[tuple[str, str, int]] = []  # (path, file, size as listed)
        links: list[str] = []
        others: list[str] = []
        specials: list[str] = []
        for top in DEFINITION_DIRS:
            base = self.root / top
            if base.is_symlink():
                links.append(top)
                continue
            if not base.is_dir():
                continue
            # strings, not Path objects: a thousand files are walked in milliseconds
            prefix = len(str(base))
            for directory, dirs, names in os.walk(str(base), followlinks=False):
                here = top + directory[prefix:].replace(os.sep, "/")
                files_here = set(names)
                for name in sorted(dirs + names):
                    path = os.path.join(directory, name)
                    rel = f"{here}/{name}"
                    if _hidden(rel):  # dot files and folders are passed over, and never opened
                        continue
                    info = os.lstat(path)
                    if stat.S_ISLNK(info.st_mode):
                        links.append(rel)
                    elif name in files_here:
                        if not stat.S_ISREG(info.st_mode):
                            specials.append(rel)  # a FIFO would block a read forever
                        elif is_yaml_under_definitions(rel):
                            candidates.append((rel, path, info.st_size))
                        else:
                            others.append(rel)
        total = sum(size for _, _, size in candidates if size <= MAX_FILE_BYTES)  # what would be read
        if len(candidates) <= MAX_FILES and total <= MAX_TOTAL_BYTES:  # past a bound, none is read: the loader refuses it
            for rel, path, _ in candidates:
                with open(path, "rb") as handle:
                    files[rel] = handle.read(MAX_FILE_BYTES + 1)  # never more than the limit and a byte
                if len(files[rel]) > MAX_FILE_BYTES:
                    oversize[rel], files[rel] = os.stat(path).st_size, b""
        else:
            files = dict.fromkeys((rel for rel, _, _ in candidates), b"")
        head = self.head()
        dirty = head is None or links or specials or not self._committed(head, files, bool(oversize))
        return Snapshot(
            label="working tree", revision=head, dirty=bool(dirty), files=dict(sorted(files.items())),
            links=tuple(sorted(links)), others=tuple(sorted(others)), oversize=oversize, specials=tuple(sorted(specials)),
            total_bytes=total if total > MAX_TOTAL_BYTES else 0,
        )
