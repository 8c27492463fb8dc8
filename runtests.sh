#!/usr/bin/env bash
# Run the test suite on a real PostgreSQL.
#
#   ./runtests.sh               Python 3.11 + Django 5.2 LTS
#   ./runtests.sh --all         also Django 6.x on Python 3.12
#   ./runtests.sh -k feed -x    extra arguments go to pytest
#
# It creates its own virtual environments (.venv, .venv-django6), installs the
# package with its test extras, finds or starts PostgreSQL (scripts/postgres.py:
# DATABASE_URL, else the local cluster, else an embedded server) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")"

all=0
if [ "${1:-}" = "--all" ]; then
    all=1
    shift
fi

find_python() {  # find_python 3.12 -> a python3.12 executable, or nothing
    local version=$1 candidate
    for candidate in "python$version" "$HOME/.pyenv/versions/$version"*/bin/"python$version"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

make_venv() {  # make_venv DIR PYTHON DJANGO-REQUIREMENT
    local dir=$1 python=$2 django=$3
    local stamp
    stamp="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16) $django"
    if [ ! -x "$dir/bin/python" ]; then
        echo "runtests: creating $dir with $python" >&2
        "$python" -m venv "$dir"
    fi
    if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "runtests: installing into $dir ($django)" >&2
        if ! { "$dir/bin/python" -m pip install --upgrade pip &&
               "$dir/bin/python" -m pip install -e ".[test,embedded]" "$django"; } >"$dir/install.log" 2>&1; then
            cat "$dir/install.log" >&2
            echo "runtests: installing into $dir failed (log above)" >&2
            exit 1
        fi
        echo "$stamp" > "$dir/.stamp"
    fi
}

run_leg() {  # run_leg DIR PYTHON DJANGO-REQUIREMENT [pytest args]
    local dir=$1 python=$2 django=$3
    shift 3
    make_venv "$dir" "$python" "$django"
    DATABASE_URL="$("$dir/bin/python" scripts/postgres.py)"
    export DATABASE_URL
    echo "runtests: $("$dir/bin/python" -c 'import django, sys; print(f"Django {django.get_version()} on Python {sys.version.split()[0]}")')" >&2
    "$dir/bin/python" -m pytest "$@"
}

python311=$(find_python 3.11)
python311=${python311:-python3}
run_leg .venv "$python311" "Django>=5.2,<5.3" "$@"

if [ "$all" = 1 ]; then
    python312=$(find_python 3.12)
    if [ -z "$python312" ]; then
        echo "runtests: --all needs Python 3.12 for Django 6.x; none found" >&2
        exit 1
    fi
    run_leg .venv-django6 "$python312" "Django>=6.0,<6.2" "$@"
fi
