# Sourced by scripts/reconcile and scripts/test: create or reuse a virtual environment and
# install whatever is missing, so a fresh clone needs only Python 3.11+, Node.js and git.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECONCILE_VENV:-$ROOT/.venv}"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    python="$(find_python)" || exit 1
    echo "setting up $VENV ..." >&2
    "$python" -m venv "$VENV" >&2
fi

# Reinstall only when the declared dependencies change.
stamp="$VENV/.reconcile-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing dependencies into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" >&2
    echo "$want" >"$stamp"
fi

command -v node >/dev/null 2>&1 || echo "warning: Node.js not found; synthesis (cdktf) will fail" >&2
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
export PATH="$VENV/bin:$PATH"
