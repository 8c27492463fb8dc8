# Shared by runtests.sh and demo.sh: find an interpreter, make a venv with the package.

find_python() {  # find_python 3.12 -> a python3.12 executable, or nothing
    local version=$1 candidate
    for candidate in "python$version" "$HOME/.pyenv/versions/$version"*/bin/"python$version"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
}

make_venv() {  # make_venv DIR PYTHON DJANGO-REQUIREMENT EXTRAS
    local dir=$1 python=$2 django=$3 extras=$4
    local stamp
    stamp="$(cat pyproject.toml scripts/venv.sh | sha256sum | cut -c1-16) $django $extras"
    if [ ! -x "$dir/bin/python" ]; then
        echo "creating $dir with $python" >&2
        "$python" -m venv "$dir"
    fi
    if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "installing into $dir ($django, extras: $extras); log in $dir/install.log" >&2
        if ! { "$dir/bin/python" -m pip install --upgrade pip &&
               "$dir/bin/python" -m pip install -e ".[$extras]" "$django"; } >"$dir/install.log" 2>&1; then
            cat "$dir/install.log" >&2
            echo "installing into $dir failed (log above)" >&2
            exit 1
        fi
        echo "$stamp" > "$dir/.stamp"
    fi
}
