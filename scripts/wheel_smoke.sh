#!/usr/bin/env bash
# What `pip install budcache` gives a user: build the sdist and the wheel from the repository root, check that both
# hold the package files (the demo model's weights included), install the wheel into a fresh venv (torch first, as
# the Makefile does) and run the command line from outside the repository on the embedded demo model.
#
#   PYTHON=.venv/bin/python scripts/wheel_smoke.sh     (`make check` runs it)
#
# PYTHON builds (python -m build --no-isolation: it needs `build` and setuptools, the `dev` extra) and creates the
# venv. Installs go through pip's cache (and its configured indexes), so a second run downloads nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [[ "$PYTHON" == */* && -d "$(dirname "$PYTHON")" ]]; then # a relative path holds after the phases' cd
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
TORCH="torch==2.13.0" # as the Makefile's install rule
TMP="$(mktemp -d "${TMPDIR:-/tmp}/budcache-wheel-smoke.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
unset PYTHONPATH

# setuptools' build and egg-info folders in the temporary folder: nothing is written into the repository, and no
# stale build/lib or SOURCES.txt of an earlier build reaches the wheel or the sdist
printf '[build]\nbuild_base = %s\n[egg_info]\negg_base = %s\n' "$TMP/build" "$TMP" >"$TMP/setup.cfg"
mkdir -p "$TMP/build"

START=$EPOCHREALTIME
TIMES=()
phase() { # phase NAME COMMAND...: run it in a subshell that stops at its first error (set -e holds there: it
    # is no `if` condition); on failure show the end of its log; print its wall time
    local name=$1 t0=$EPOCHREALTIME rc
    shift
    set +e
    (
        set -e
        "$@"
    ) >"$TMP/$name.log" 2>&1
    rc=$?
    set -e
    if ((rc != 0)); then
        echo "wheel-smoke: $name failed (exit $rc):" >&2
        tail -n 40 "$TMP/$name.log" >&2
        exit 1
    fi
    TIMES+=("$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" 'BEGIN { printf "%-8s %6.1f s", n, b - a }')")
    echo "wheel-smoke: ${TIMES[-1]}"
}

build() {
    cd "$ROOT"
    DIST_EXTRA_CONFIG="$TMP/setup.cfg" "$PYTHON" -m build --no-isolation --sdist --wheel --outdir "$TMP/dist" .
}

contents() { # the package files of the wheel and of the sdist (same set, demo weights among them)
    "$PYTHON" - "$TMP/dist" <<'EOF'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheels, sdists = sorted(dist.glob("budcache-*.whl")), sorted(dist.glob("budcache-*.tar.gz"))
if len(wheels) != 1 or len(sdists) != 1:
    sys.exit(f"expected one wheel and one sdist in {dist}, got {[p.name for p in dist.iterdir()]}")
in_wheel = {n for n in zipfile.ZipFile(wheels[0]).namelist() if n.startswith("budcache/")}
with tarfile.open(sdists[0]) as tar:  # budcache-0.1.0/budcache/... -> budcache/...
    in_sdist = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/budcache/" in m.name}
weights = sorted(n for n in in_wheel if n.startswith("budcache/demo/weights/") and n.endswith(".safetensors"))
if not weights:
    sys.exit(f"{wheels[0].name} holds no budcache/demo/weights/*.safetensors")
if "budcache/cli/__init__.py" not in in_wheel:
    sys.exit(f"{wheels[0].name} holds no command line (budcache/cli)")
if in_wheel != in_sdist:
    sys.exit(
        f"the wheel and the sdist hold different package files: only in the wheel {sorted(in_wheel - in_sdist)}, "
        f"only in the sdist {sorted(in_sdist - in_wheel)}"
    )
print(f"{wheels[0].name}, {sdists[0].name}: {len(in_wheel)} package files each, weights {weights}")
EOF
}

venv() {
    "$PYTHON" -m venv "$TMP/venv"
}

install() {
    local pip=("$TMP/venv/bin/python" -m pip install --no-compile --disable-pip-version-check)
    "${pip[@]}" "$TORCH"
    "${pip[@]}" -c "$ROOT/constraints.txt" "$(ls "$TMP"/dist/budcache-*.whl)"
}

cli() { # from a folder outside the repository (no PYTHONPATH): the installed package, not the source tree
    ls "$TMP"/venv/lib/python*/site-packages/budcache/demo/weights/*.safetensors
    mkdir -p "$TMP/run"
    cd "$TMP/run"
    "$TMP/venv/bin/budcache" --help
}

search() {
    cd "$TMP/run"
    "$TMP/venv/bin/budcache" search --budget 3 --steps 8 --calib 4 --iterations 8 --starts 1 --kicks 0 \
        --no-progress --out "$TMP/plan.json"
    "$TMP/venv/bin/python" -c 'import json, sys; plan = json.load(open(sys.argv[1])); assert plan["budget"] == 3, plan' \
        "$TMP/plan.json"
}

phase build build
phase contents contents
phase venv venv
phase install install
phase cli cli
phase search search
echo "wheel-smoke: ok in $(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s" \
    "($(tail -n 1 "$TMP/contents.log"))"
