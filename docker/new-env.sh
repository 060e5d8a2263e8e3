#!/bin/sh
# Write docker/.env from docker/.env.example, with a new random value for every `change-me`.
# Usage: sh docker/new-env.sh [EXAMPLE [OUTPUT]]   (an existing OUTPUT is kept, never overwritten)
set -eu
here=$(dirname "$0")
example=${1:-$here/.env.example}
output=${2:-$here/.env}
if [ -e "$output" ]; then
    echo "$output exists; keeping it."
    exit 0
fi
secret() {  # 32 hex digits from the kernel's random source: safe in a URL as they are
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}
umask 077
tmp="$output.tmp.$$"
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        *=change-me) printf '%s=%s\n' "${line%%=*}" "$(secret)" ;;
        *) printf '%s\n' "$line" ;;
    esac
done < "$example" > "$tmp"
mv "$tmp" "$output"
echo "Wrote $output with new random passwords and a JupyterLab token."
