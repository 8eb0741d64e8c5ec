#!/usr/bin/env bash
# Installed the way users install: build a wheel, install it (not editable) with the extra the README names into a
# fresh virtual environment, and run `edgeopt plan` and a short `optimize` from outside the checkout, on a model
# that is not ours. An editable install hides a sub-package missing from the wheel; this does not.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/edgeopt-*.whl)"
"$work/venv/bin/python" -m pip install -q "${wheel}[openvino]"
cd "$work"  # the checkout must not be importable from here
export EDGEOPT_CACHE_DIR="$work/cache"
"$work/venv/bin/python" -c "import edgeopt, sys; sys.exit(0 if '$repo' not in edgeopt.__file__ else 1)"
"$work/venv/bin/edgeopt" --help > /dev/null
"$work/venv/bin/edgeopt" plan --model 'torchvision:mobilenet_v3_small?num_classes=10' --input-shape 1,3,64,64 \
    > "$work/plan.txt"
"$work/venv/bin/edgeopt" optimize --model 'torchvision:mobilenet_v3_small?num_classes=10' \
    --input-shape 1,3,64,64 --time-budget 60 --out "$work/out"
test -s "$work/out/report.json"
"$work/venv/bin/python" - "$work/out/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["baseline"]["status"] == "ok", r["baseline"]
print(f"wheel smoke: chose {r['chosen']} in {r['wall_time_s']} s")
PY
