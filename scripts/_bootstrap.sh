# Sourced by scripts/serve, scripts/test and scripts/bench: make .venv (Python >= 3.11) and install the
# project with pinned versions (constraints.txt), once per change of pyproject.toml or constraints.txt.
# Usage: bootstrap [extra]   e.g. bootstrap test
bootstrap() {
    local extra="${1:-}"
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    local py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "switchboard needs Python 3.11 or newer; '$py' is $("$py" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv ..." >&2
        "$py" -m venv .venv || { echo "could not create .venv (on Debian: apt-get install python3-venv)" >&2; exit 1; }
    fi
    local spec="."
    [ -n "$extra" ] && spec=".[$extra]"
    local stamp
    stamp=".venv/.installed-${extra:-base}-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "installing switchboard${extra:+ [$extra]} into .venv ..." >&2
        .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e "$spec" >&2 || exit 1
        rm -f .venv/.installed-"${extra:-base}"-*
        touch "$stamp"
    fi
}
