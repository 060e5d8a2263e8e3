#!/bin/sh
# make test-pythons: the whole suite once per Python 3.11, 3.12 and 3.13 found on this machine,
# each in its own virtual environment (.venv-3.X), sharing the course server. One line per version.
# A version that is not installed is reported, not failed; a failed run fails the whole.
cd "$(dirname "$0")/.." || exit 1
mkdir -p .test-pythons
failed=0
summary=""
for minor in 3.11 3.12 3.13; do
    python=""
    if command -v pyenv >/dev/null 2>&1; then  # the newest installed patch release of that minor
        version=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor}\.[0-9]+$" | sort -t. -k3 -n | tail -1)
        [ -n "$version" ] && python="$(pyenv prefix "$version")/bin/python3"
    fi
    [ -z "$python" ] && python=$(command -v "python$minor" 2>/dev/null)
    if [ -z "$python" ] || ! [ -x "$python" ]; then
        summary="${summary}Python $minor: not installed here, skipped
"
        continue
    fi
    full=$("$python" -c 'import platform; print(platform.python_version())')
    log=".test-pythons/$minor.log"
    echo "== Python $full ($python): make test, log in $log"
    started=$(date +%s)
    if make test PYTHON="$python" VENV=".venv-$minor" >"$log" 2>&1; then verdict=passed; else verdict=FAILED; failed=1; fi
    counts=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$log" | tail -1 | sed -E 's/^=+ (.*) =+$/\1/')
    line="Python $full: $verdict ($counts; $(( $(date +%s) - started )) s in all)"
    echo "$line"
    summary="${summary}${line}
"
done
echo
printf '%s' "$summary"
exit $failed
