#!/bin/sh
# analysis/gpu_check.py with the project's venv python (python3 where there is none, e.g. a bare GPU image).
d=$(dirname "$0"); py="$d/../.venv/bin/python"; [ -x "$py" ] || py=python3; exec "$py" "$d/gpu_check.py" "$@"
