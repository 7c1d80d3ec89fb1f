"""Units -> Terraform JSON through the platforms in constructs/, deterministic and cached.

The same unit gives the same bytes on every run and in every clone: keys are sorted, paths
are relative, and nothing depends on time or on the machine. Results are cached by the unit's
configuration hash, so Node (cdktf) starts only when a unit's desired state is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from reconciler.errors import ReconcileError
from reconciler.resolve import SITE, Unit
from rpi import provider_rules, registry


class NotSynthesizable(ReconcileError):
    pass


def render_json(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def synthesize(units: Iterable[Unit], cache_dir: Path | None = None, removed: bool = False) -> dict[str, str]:
    """{unit key: Terraform JSON text}. With `removed`, each stack keeps only its backend, so
    that planning it destroys everything in its state."""
    out: dict[str, str] = {}
    todo: list[Unit] = []
    for unit in units:
        if not unit.synthesizable:
            raise NotSynthesizable(f"{unit.title}: the {unit.platform} platform cannot be synthesized yet")
        cached = _cache_path(cache_dir, unit, removed)
        if cached is not None and cached.is_file():
            out[unit.key] = cached.read_text()
        else:
            todo.append(unit)
    if not todo:
        return out

    if shutil.which(os.environ.get("JSII_NODE") or "node") is None:
        titles = ", ".join(u.title for u in todo)
        raise NotSynthesizable(
            f"Node.js is not on PATH, and synthesizing {titles} needs it (cdktf runs in Node): install Node.js 20 "
            "or newer (Debian: apt-get install nodejs); nothing was planned"
        )
    from rpi import cdk  # starts Node: only when something is not cached

    for unit in todo:
        platform = registry.platform(unit.platform)

        def build(app, unit=unit, platform=platform):
            stack = cdk.new_stack(app, unit.stack)
            if removed:
                platform.backend(stack, unit.state)
            elif unit.kind == SITE:
                platform.landing_zone(stack, unit.spec)
            else:
                platform.cluster(stack, unit.spec)
            return {unit.key: stack}

        try:
            document = cdk.synthesize(build)[unit.key]
        except ValueError as exc:  # the platform refuses what it cannot build, saying what to change
            files = ", ".join(unit.inputs)
            raise NotSynthesizable(f"{unit.title} ({files}): {exc}") from None
        except (RuntimeError, OSError, EOFError, BrokenPipeError) as exc:  # jsii's Node process failed under it
            if isinstance(exc, ReconcileError):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise NotSynthesizable(f"{unit.title}: the synthesis (cdktf in Node, through jsii) failed: {first}") from None
        if not removed:
            _keep_provider_rules(unit, document)
        text = render_json(document)
        out[unit.key] = text
        cached = _cache_path(cache_dir, unit, removed)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(cached)
    return out


def _keep_provider_rules(unit: Unit, document: dict) -> None:
    """Refuse a cloud stack that its provider would refuse to plan or apply, or that would not
    work once applied (rpi.provider_rules), before any provider is downloaded."""
    findings = provider_rules.check(document, unit.spec.site)
    if findings:
        listed = "\n".join(f"  - {f}" for f in findings)
        raise NotSynthesizable(
            f"{unit.title} ({', '.join(unit.inputs)}): the stack breaks {len(findings)} rule(s) of its "
            f"provider, so nothing was planned:\n{listed}"
        )


def _cache_path(cache_dir: Path | None, unit: Unit, removed: bool) -> Path | None:
    if cache_dir is None:
        return None
    if removed:  # only the backend: one per state location (an orphan's config hash is "")
        where = hashlib.sha256(f"{registry.code_digest(unit.platform)}\0{unit.state}".encode()).hexdigest()[:32]
        return cache_dir / f"{where}-removed.tf.json"
    return cache_dir / f"{unit.config_hash}-desired.tf.json"
