#!/bin/sh
# Install JupyterHub's proxy, configurable-http-proxy, from the npm registry into .hub/ (git-ignored) at
# the versions tools/hub-proxy/package-lock.json pins, or reuse the copy already there; print its path.
#   sh tools/hub-proxy.sh
# Exit 3: Node.js 20+ with npm is missing. Exit 4: the npm registry cannot be reached. (tests/test_jupyterhub.py
# skips on those outside CI, and fails on them in CI.)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
hub="$here/.hub"
proxy="$hub/node_modules/.bin/configurable-http-proxy"
want=$(sed -n 's/.*"configurable-http-proxy": "\([0-9.]*\)".*/\1/p' "$here/tools/hub-proxy/package.json")
if [ -x "$proxy" ] && [ "$("$proxy" --version 2>/dev/null || true)" = "$want" ] \
   && cmp -s "$here/tools/hub-proxy/package-lock.json" "$hub/package-lock.json"; then
    echo "$proxy"; exit 0
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "JupyterHub's proxy (configurable-http-proxy $want) needs Node.js 20 or later and npm, and this machine has no $(command -v node >/dev/null 2>&1 && echo npm || echo node): install them (https://nodejs.org/; on Debian 13, apt install nodejs npm), then run sh tools/hub-proxy.sh again." >&2
    exit 3
fi
major=$(node -e 'console.log(process.versions.node.split(".")[0])')
if [ "$major" -lt 20 ]; then
    echo "JupyterHub's proxy (configurable-http-proxy $want) needs Node.js 20 or later, and this machine's node is $(node --version): install a newer one (https://nodejs.org/), then run sh tools/hub-proxy.sh again." >&2
    exit 3
fi
mkdir -p "$hub"
cp "$here/tools/hub-proxy/package.json" "$here/tools/hub-proxy/package-lock.json" "$hub/"
log="$hub/npm-install.log"
# The cache inside .hub/: nothing written to the user's home, and a second install reads it.
if ! (cd "$hub" && npm ci --no-audit --no-fund --cache "$hub/.npm-cache" --fetch-retries 1 --fetch-timeout 30000 >"$log" 2>&1); then
    if grep -Eq 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network|proxy' "$log"; then
        echo "npm could not reach the npm registry ($(npm config get registry)) to install configurable-http-proxy $want: $(grep -Em1 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|network|proxy' "$log"). Allow this machine to reach it (or set npm's registry to a mirror: npm config set registry URL), then run sh tools/hub-proxy.sh again." >&2
        exit 4
    fi
    echo "npm ci failed installing configurable-http-proxy $want into .hub/ (log: $log):" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
"$proxy" --version >/dev/null
echo "$proxy"
