#!/bin/sh
# Run the whole suite as an ordinary user from a fresh clone, as a learner would:
#   sh tools/test-as-user.sh [PYTHON]
# As root it creates the login user `pgcourse-tester` if needed, clones this checkout's HEAD into a
# private folder (mode 700) in that user's home, and runs `make test` there as that user with a
# plain environment. As an ordinary user it does the same as yourself. PYTHON defaults to the
# first python3.11+ that user can run (the system's; pyenv under /root is out of its reach).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
user=${PGCOURSE_TEST_USER:-pgcourse-tester}
if [ "$(id -u)" -eq 0 ]; then
    id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
    home=$(getent passwd "$user" | cut -d: -f6)
    as_user() { setpriv --reuid="$user" --regid="$user" --init-groups env -i HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin "$@"; }
else
    user=$(id -un); home=$HOME
    as_user() { env -i HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin "$@"; }
fi
python=${1:-}
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        found=$(as_user sh -c "command -v $candidate" || true)
        if [ -n "$found" ] && as_user "$found" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then python=$found; break; fi
    done
fi
[ -n "$python" ] || { echo "No Python 3.11+ that $user can run."; exit 1; }
work=$(as_user mktemp -d "$home/pgcourse-clone.XXXXXX")  # mode 700: nobody else can enter
git clone --quiet --no-hardlinks "$here" "$work/course"
[ "$(id -u)" -eq 0 ] && chown -R "$user:" "$work/course"
echo "== $user, $(as_user "$python" -c 'import platform; print("Python", platform.python_version())'), fresh clone in $work/course"
status=0
as_user sh -c "cd '$work/course' && make test PYTHON='$python'" || status=$?
# Leave nothing running: stop the clone's server, then delete the clone (its data lives inside it).
as_user sh -c "cd '$work/course' && .venv/bin/python -m pgcourse db stop" >/dev/null 2>&1 || true
rm -rf "$work"
echo "== make test as $user: exit $status"
exit $status
