"""What the init and lab services of docker/compose.yaml run, in the lab image, from the mounted checkout.

    python docker/course.py init              set the course up on the db service (one-shot)
    python docker/course.py lab [COMMAND ...]  JupyterLab (or COMMAND) with the course's settings

Both read DATABASE_URL, LIMITED_DATABASE_URL and COURSE_ADMIN_URL, which compose fills in from
docker/.env. `init` runs pgcourse.provision.provision, the code the bundled server runs at its first
start, so the db service gets the same roles, rights, sample data and databases.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the course's package, from the checkout

from pgcourse import envfile, provision, target  # noqa: E402
from pgcourse.errors import CourseError  # noqa: E402
from pgcourse.preflight import check_database  # noqa: E402

URLS = ("DATABASE_URL", "LIMITED_DATABASE_URL", "COURSE_ADMIN_URL")
JUPYTERLAB = [sys.executable, "-m", "pgcourse", "lab", "--no-browser", "--ip=0.0.0.0", "--port=8888"]


def urls() -> dict[str, str]:
    missing = [key for key in URLS if not os.environ.get(key)]
    if missing:
        sys.exit(f"{', '.join(missing)} not set: this runs inside docker/compose.yaml's services (make docker-up).")
    return {key: os.environ[key] for key in URLS}


def password(url: str, role: str) -> str:
    """The password in a learner URL, after checking that the URL names the role and the course database."""
    parts = urlsplit(url)
    if unquote(parts.username or "") != role or unquote(parts.path.lstrip("/")) != provision.COURSE_DB:
        sys.exit(f"A course URL must connect as {role!r} to the database {provision.COURSE_DB!r}"
                 " (see docker/compose.yaml).")
    return unquote(parts.password or "")


def init(scale: float) -> None:
    """The bundled server's first-start set-up, on the db service, with the passwords of docker/.env."""
    given = urls()
    provision.provision(provision.Admin(given["COURSE_ADMIN_URL"]),
                        password(given["DATABASE_URL"], provision.LEARNER),
                        password(given["LIMITED_DATABASE_URL"], provision.LIMITED), scale=scale,
                        whole_server=True, report=True)  # the db service is the course's alone
    for key in ("DATABASE_URL", "LIMITED_DATABASE_URL"):
        print(f"{key}: {check_database(given[key])}")
    print("The course is set up on the db service.")


def lab(command: list[str]) -> None:
    """Write the course's settings file (COURSE_SERVER=external), then run JupyterLab or `command`.

    With that file, `python -m pgcourse lab` gives every notebook DATABASE_URL, and
    `python -m pgcourse db reset` works in a JupyterLab terminal, as with your own server.
    """
    given = urls()
    path = target.env_path()
    if path.is_relative_to(ROOT):  # the checkout is mounted: its .env belongs to the local set-up
        sys.exit(f"PGCOURSE_ENV must point outside the checkout, not at {path}.")
    envfile.write(path, given, server="external")
    command = command or JUPYTERLAB
    os.execvp(command[0], command)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python docker/course.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    init_parser = steps.add_parser("init", help="set the course up on the db service")
    init_parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests load less data
    lab_parser = steps.add_parser("lab", help="JupyterLab, or COMMAND, with the course's settings")
    lab_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    try:
        if args.step == "init":
            init(args.scale)
        else:
            lab(args.command)
    except CourseError as exc:
        sys.exit(exc.text)


if __name__ == "__main__":
    main()
