"""The `reconcile` command's entry point: starts the remote-record helper (`prefetch`) before
the command's own imports, so that the two processes overlap from the first instant, then
runs the command."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X`, read before the arguments are parsed (a hint)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def main() -> int:
    argv = sys.argv[1:]
    if "-h" not in argv and "--help" not in argv:
        from reconciler import prefetch

        root = Path(_option(argv, "--repo") or ".").resolve()
        state_root = Path(_option(argv, "--state-root") or os.environ.get("RECONCILE_STATE_ROOT") or root).resolve()
        prefetch.start_early(root, state_root)
    from reconciler.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
