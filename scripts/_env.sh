# Sourced by scripts/reconcile and scripts/test: create or reuse a virtual environment and
# install whatever is missing, so a fresh clone needs only Python 3.11+, Node.js and git.
# The repository's root, by parameter expansion: no process is started for it.
here="${BASH_SOURCE[0]%/*}"
[ "$here" != "${BASH_SOURCE[0]}" ] || here=.
case "$here" in /*) ;; *) here="$PWD/$here" ;; esac
ROOT="${here%/scripts}"
ROOT="${ROOT%/.}"
[ -f "$ROOT/pyproject.toml" ] || ROOT="$(cd "$here/.." && pwd)"  # an unusual path: ask the shell
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

# Reinstall only when the declared dependencies change: the stamp is written after an install
# and compared by modification time with pyproject.toml (a checkout that changes the file makes
# it newer). Shell built-ins only: a run with nothing to install hashes nothing and starts no
# process before reconcile itself.
stamp="$VENV/.reconcile-installed"
if [ ! "$stamp" -nt "$ROOT/pyproject.toml" ]; then
    echo "installing dependencies into $VENV ..." >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" >&2
    : >"$stamp"
fi

command -v node >/dev/null 2>&1 || echo "warning: Node.js not found; synthesis (cdktf) will fail" >&2
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
export PATH="$VENV/bin:$PATH"
