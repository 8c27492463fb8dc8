#!/usr/bin/env bash
# Run the two-service demo (publisher + subscriber) on 127.0.0.1.
#
#   ./demo.sh          start everything, print the URLs; Ctrl-C stops it all
#   ./demo.sh --tour   a scripted walk-through that runs by itself and exits
#
# Installs into .venv, then uses DATABASE_URL if set, else the local
# PostgreSQL, else an embedded server with its data in .pgdata/.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh

python311=$(find_python 3.11)
make_venv .venv "${python311:-python3}" "Django>=5.2,<5.3" test,embedded
DATABASE_URL="$(.venv/bin/python scripts/postgres.py)"
export DATABASE_URL
exec .venv/bin/python scripts/demo.py "$@"
