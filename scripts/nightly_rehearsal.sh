#!/usr/bin/env bash
# Rehearse .github/workflows/nightly.yml on one machine: two nights of the CPU matrix, then the
# report job of each night (restore previous nights, gather tonight's runs, build the site, compare
# with the previous night, keep tonight) exactly as the workflow runs them.
#
#   scripts/nightly_rehearsal.sh [--out DIR] [--fixtures] [--no-plant] [-- EXTRA PYTEST ARGS]
#
# Suites job, per matrix entry: `pytest suites/ --backend ort ... --shard I/2` with HARNESS_MACHINE_ID
# set, as the workflow's `tox -e ort -- ...` runs it (tox itself is skipped: it would build a fresh
# venv per entry). The rehearsal keeps to the ci models at fp32 (REHEARSAL_PYTEST_ARGS, default
# "--tag ci --precision fp32") and gives each shard its own machine id (rehearsal-a, rehearsal-b), so
# the site shows two machines; about 2-3 minutes per night on a quiet 2-core machine.
# Before night 2's report job one passing case of night 2 is turned into an engine mismatch
# ("planted"), so its comparison must fail with exit 1 (--no-plant: leave night 2 as it ran).
# --fixtures: the suites jobs "upload" the checked-in runs of tests/data/runs instead (night 1: run-a
# on ci-box-3f9a1c + run-c on arm-laptop-77d2e0; night 2: run-b + run-c), in seconds.
#
# Output (DIR, default ./rehearsal, replaced):
#   artifacts/<night>/results-<job>/<run-id>/   what each suites job uploaded
#   cache/nights/                               the Actions cache of nights between the two report jobs
#   work/<night>/{nights,site}                  each report job's workspace
#   site/                                       the published site of the last night
#   compare_exit, timings.txt                   exit code of night 2's harness compare; seconds per step
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$PWD/rehearsal"
MODE=suites
PLANT=1
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --fixtures) MODE=fixtures; shift ;;
    --no-plant) PLANT=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "nightly_rehearsal.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
read -r -a PYTEST_ARGS <<< "${REHEARSAL_PYTEST_ARGS:---tag ci --precision fp32}"
# the CPU matrix of nightly.yml that runs here: name, tox env (= backend), machine id, pytest_args
MATRIX=("ort-1of2 ort rehearsal-a --shard 1/2" "ort-2of2 ort rehearsal-b --shard 2/2")
KEEP_NIGHTS=30

command -v harness >/dev/null 2>&1 || harness() { python -m harness.cli "$@"; }
cd "$ROOT" || exit 2
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/timings.txt" ]; then
  echo "nightly_rehearsal.sh: $OUT is a non-empty directory that is not a rehearsal: pass --out NEW_DIR" >&2
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT/cache" "$OUT/artifacts" "$OUT/work" || exit 2
: > "$OUT/timings.txt"

timed() {  # timed LABEL CMD...: run, log the seconds it took, return its exit code
  local label=$1 start=$SECONDS code
  shift
  "$@"
  code=$?
  echo "$label: $((SECONDS - start)) s (exit $code)" | tee -a "$OUT/timings.txt" >&2
  return $code
}

suites_job() {  # suites_job NIGHT NAME BACKEND MACHINE PYTEST_ARGS... -> artifacts/NIGHT/results-NAME/
  local night=$1 name=$2 backend=$3 machine=$4
  shift 4
  local upload="$OUT/artifacts/$night/results-$name"
  mkdir -p "$upload"
  if [ "$MODE" = fixtures ]; then
    return 0  # filled by fixture_runs
  fi
  # nightly.yml: python -m tox -e <env> -- --results-dir results --run-id nightly-<id>-<attempt>-<name>
  #              --no-report -m "not slow" <pytest_args> <suites_args>; tox.ini adds suites/ --backend <env>
  HARNESS_MACHINE_ID="$machine" python -m pytest suites/ --backend "$backend" \
    --results-dir "$upload" --run-id "nightly-$night-$name" --no-report -m "not slow" "$@" \
    "${PYTEST_ARGS[@]}" "${EXTRA[@]}" -q -p no:cacheprovider >"$upload.log" 2>&1
  local code=$?
  echo "  $name: pytest exit $code, $(find "$upload" -name records.jsonl -exec cat {} + | wc -l) records"
  return 0  # fail-fast: false; the report job runs whatever the suites did
}

fixture_runs() {  # the checked-in runs stand in for the two suites jobs of a night
  local night=$1 index=$2 perf=run-a
  [ "$index" = 2 ] && perf=run-b
  cp -r "$ROOT/tests/data/runs/$perf" "$OUT/artifacts/$night/results-ort-1of2/$perf"
  cp -r "$ROOT/tests/data/runs/run-c" "$OUT/artifacts/$night/results-ort-2of2/run-c"
}

plant() {  # one passing case of the night becomes an engine mismatch
  python - "$OUT/artifacts/$1" <<'EOF'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("*/*/records.jsonl")):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("status") == "pass" and rec.get("suite") in ("conformance", "perf"):
            rec.update(status="mismatch", cause="engine", latency=None,
                       reason="planted by scripts/nightly_rehearsal.sh: outputs differ from PyTorch")
            lines[i] = json.dumps(rec, sort_keys=True)
            path.write_text("\n".join(lines) + "\n")
            print(f"  planted: {rec['model']} {rec['backend']} {rec['precision']} [{rec['suite']}] -> mismatch")
            sys.exit(0)
sys.exit("nothing to plant: no passing case in the night")
EOF
}

report_job() {  # report_job NIGHT: the steps of nightly.yml's report job, in a fresh workspace
  local NIGHT=$1 ws="$OUT/work/$1"
  mkdir -p "$ws" && cd "$ws" || return 2
  # Restore the previous nights (actions/cache/restore, restore-keys nightly-nights-)
  [ -d "$OUT/cache/nights" ] && cp -r "$OUT/cache/nights" nights
  # Download every job's run directory as tonight (download-artifact, merge-multiple)
  mkdir -p "nights/$NIGHT"
  for job in "$OUT/artifacts/$NIGHT"/results-*/; do cp -r "$job". "nights/$NIGHT/"; done
  # Build the site
  timed "site $NIGHT" harness site nights -o site --keep "$KEEP_NIGHTS" --fail-on p50:10% --fail-on missing --fail-on unmeasured --fail-on status
  # Compare with the previous night
  local previous code=0
  previous=$(ls -1 nights | grep -vxF "$NIGHT" | sort | tail -n 1)
  if [ -z "$previous" ]; then
    echo "  no previous night in the cache: nothing to compare with"
  else
    timed "compare $NIGHT" harness compare "nights/$previous" "nights/$NIGHT" --fail-on p50:10% --fail-on missing --fail-on unmeasured --fail-on status | tee site/compare.txt
    code=${PIPESTATUS[0]}
  fi
  echo "$code" > "$OUT/compare_exit"
  # Keep tonight for the next nights; save the nights (actions/cache/save)
  ls -1 nights | sort | head -n "-$KEEP_NIGHTS" | while read -r old; do rm -rf "nights/$old"; done
  rm -rf "$OUT/cache/nights" && cp -r nights "$OUT/cache/nights"
  cd "$ROOT" || return 2
}

echo "rehearsal of nightly.yml ($MODE) into $OUT"
for index in 1 2; do
  night="$(date -u +%Y-%m-%d)-rehearsal-$index"
  echo "night $index: $night"
  for entry in "${MATRIX[@]}"; do
    read -r -a e <<< "$entry"
    timed "suites $night ${e[0]}" suites_job "$night" "${e[@]}"
  done
  [ "$MODE" = fixtures ] && fixture_runs "$night" "$index"
  if [ "$index" = 2 ] && [ "$PLANT" = 1 ]; then plant "$night" || exit 1; fi
  report_job "$night"
done
rm -rf "$OUT/site" && cp -r "$OUT/work/$night/site" "$OUT/site"
echo "site: $OUT/site/index.html; night 2 compare exit $(cat "$OUT/compare_exit")"
echo "total: $SECONDS s" | tee -a "$OUT/timings.txt"
