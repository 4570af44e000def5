#!/usr/bin/env bash
# Run the test suite against an AddressSanitizer + UndefinedBehaviorSanitizer
# build of convkit.
#
#   tools/sanitize.sh [pytest arguments]   (default: tests -q; paths are
#                                          relative to the repository root)
#
# The working tree (tracked and untracked, non-ignored files) is copied to
# $CONVKIT_SANITIZE_DIR (default /tmp/convkit-sanitize) and installed there
# with CONVKIT_SANITIZE=1 into its own virtual environment, so the checkout's
# own (editable) build is left alone. Needs gcc (or CC=clang) with libasan.
#
# CPython leaks by design, so leak detection is off; any ASan or UBSan report
# aborts the run. PyTorch is not built for ASan and misbehaves under it, so
# `import torch` is made to fail: tests that need torch skip.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${CONVKIT_SANITIZE_DIR:-/tmp/convkit-sanitize}
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}

rm -rf "$WORK"
mkdir -p "$WORK/src" "$WORK/no-torch/torch"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf -) | tar -xf - -C "$WORK/src"

# Without its own pip and setuptools: the (newer) ones of $PYTHON build the copy.
"$PYTHON" -m venv --system-site-packages --without-pip "$WORK/venv"
CONVKIT_SANITIZE=1 "$WORK/venv/bin/python" -m pip install --quiet --no-build-isolation \
    --no-deps "$WORK/src"
# Tests must import the installed, sanitized build, not the copy's sources.
rm -rf "$WORK/src/convkit"

echo 'raise ImportError("torch is disabled under AddressSanitizer (tools/sanitize.sh)")' \
    > "$WORK/no-torch/torch/__init__.py"

# libstdc++ too: ASan must find the real __cxa_throw when C++ extensions
# (matplotlib's) throw, or it aborts with "CHECK failed ... real___cxa_throw".
export LD_PRELOAD="$("$CC" -print-file-name=libasan.so) $("$CC" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONMALLOC=malloc
export PYTHONPATH="$WORK/no-torch"

cd "$WORK/src"
"$WORK/venv/bin/python" -c '
import sys
import convkit
from convkit._lib import _openmp
flags = _openmp.build_info()["compile_flags"]
print(f"convkit from {convkit.__file__}\ncompile flags: {flags}")
assert convkit.__file__.startswith(sys.prefix), "not the sanitized copy"
assert "-fsanitize=address,undefined" in flags, "convkit was not built with sanitizers"
'

if [ $# -eq 0 ]; then
    set -- tests -q
fi
exec "$WORK/venv/bin/python" -m pytest -p no:cacheprovider "$@"
