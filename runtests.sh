#!/usr/bin/env bash
# Run the test suite on a real PostgreSQL.
#
#   ./runtests.sh               Python 3.11 + Django 5.2 LTS
#   ./runtests.sh --all         also Django 6.x on Python 3.12
#   ./runtests.sh -k feed -x    extra arguments go to pytest
#
# A whole run of the first leg also measures coverage and prints it
# (PUBSUBPULL_COVERAGE=0: not). tests/test_structure.py runs the type checker
# and the import contracts. The tests run in PUBSUBPULL_WORKERS processes
# (pytest-xdist, default 2, a test file per process at a time; 0: in this one).
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

. scripts/venv.sh

run_leg() {  # run_leg DIR PYTHON DJANGO-REQUIREMENT COVER [pytest args]
    local dir=$1 python=$2 django=$3 cover=$4
    shift 4
    # Each process has its own test databases (pytest-django adds gw0, gw1...)
    # and billing's (tests/services.py adds the process id). A file's tests
    # stay together: they share its module fixtures (billing's migrated database).
    # Files come in the order tests/conftest.py gives them (slow ones first), not
    # biggest first: the longest file (the demo) has one test.
    local workers=${PUBSUBPULL_WORKERS:-2}
    if [ "$workers" != 0 ]; then
        set -- -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
    fi
    make_venv "$dir" "$python" "$django" test,embedded
    DATABASE_URL="$("$dir/bin/python" scripts/postgres.py)"
    export DATABASE_URL
    echo "runtests: $("$dir/bin/python" -c 'import django, sys; print(f"Django {django.get_version()} on Python {sys.version.split()[0]}")')" >&2
    if [ "$cover" = 1 ]; then
        # Coverage of the package, the services the tests start included
        # (pyproject.toml, [tool.coverage]); printed after the tests.
        rm -rf .coverage
        local status=0
        "$dir/bin/python" -m coverage run -m pytest "$@" || status=$?
        "$dir/bin/python" -m coverage combine -q
        "$dir/bin/python" -m coverage report || true
        return $status
    fi
    "$dir/bin/python" -m pytest "$@"
}

# Coverage is measured on a whole run of the first leg (not when pytest
# arguments choose some tests); PUBSUBPULL_COVERAGE=0 turns it off.
cover=0
if [ $# = 0 ] && [ "${PUBSUBPULL_COVERAGE:-1}" != 0 ]; then
    cover=1
fi

# Redis for the django-tasks-rq delivery test: start it when installed but down.
if command -v redis-server >/dev/null 2>&1 && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    echo "runtests: starting redis-server on 127.0.0.1:6379" >&2
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
    for _ in $(seq 20); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

python311=$(find_python 3.11)
python311=${python311:-python3}
run_leg .venv "$python311" "Django>=5.2,<5.3" "$cover" "$@"

if [ "$all" = 1 ]; then
    python312=$(find_python 3.12)
    if [ -z "$python312" ]; then
        echo "runtests: --all needs Python 3.12 for Django 6.x; none found" >&2
        exit 1
    fi
    run_leg .venv-django6 "$python312" "Django>=6.0,<6.2" 0 "$@"
fi
