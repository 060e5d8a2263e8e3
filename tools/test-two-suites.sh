#!/bin/sh
# Two test suites at once on this machine, as an instructor with two checkouts or a learner with the
# course open while CI runs: two fresh clones of HEAD, `make test` in both at the same time.
#   sh tools/test-two-suites.sh [PYTHON_A [PYTHON_B]]
# Both must pass. Logs: /tmp/pgcourse-two-suites.*/{a,b}.log (kept when one fails).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/pgcourse-two-suites.XXXXXX)
python_a=${1:-python3}
python_b=${2:-$python_a}
for side in a b; do git clone --quiet --no-hardlinks "$here" "$work/$side"; done
started=$(date +%s)
(cd "$work/a" && make test PYTHON="$python_a" >"$work/a.log" 2>&1; echo $? >"$work/a.rc") &
(cd "$work/b" && make test PYTHON="$python_b" >"$work/b.log" 2>&1; echo $? >"$work/b.rc") &
wait
status=0
for side in a b; do
    rc=$(cat "$work/$side.rc")
    counts=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$work/$side.log" | tail -1)
    echo "suite $side: exit $rc $counts"
    [ "$rc" -eq 0 ] || status=1
    (cd "$work/$side" && .venv/bin/python -m pgcourse db stop >/dev/null 2>&1 || true)
done
echo "both suites together: $(( $(date +%s) - started )) s"
if [ $status -eq 0 ]; then rm -rf "$work"; else echo "logs kept in $work"; fi
exit $status
