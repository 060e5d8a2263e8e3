"""Command line: `.venv/bin/python -m pgcourse db start|stop|status|reset|url|psql|provision|...`, `room ...`, `lab`,
`execute`."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from urllib.parse import urlsplit

from . import envfile, provision, target
from .errors import CourseError
from .preflight import check_database
from .server import ROOT, Cluster

CLI = ".venv/bin/python -m pgcourse"  # how messages name this command, from the course folder


def mask(url: str) -> str:
    """The URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _external_guard() -> bool:
    values = envfile.read(target.env_path())
    if values.get("COURSE_SERVER") == "external":
        print("The course uses your own server (COURSE_SERVER=external in .env), so the bundled server"
              f" is not used. `{CLI} db use-bundled` switches back.")
        return True
    return False


def cmd_start(args) -> None:
    if _external_guard():
        return
    started = time.perf_counter()
    cluster = Cluster()
    fresh, was_running = not cluster.initialized, cluster.status().running
    status = cluster.start()
    verb = ("was already running" if was_running else "is running" if fresh
            else f"started in {time.perf_counter() - started:.2f} s")
    print(f"The course server {verb}: 127.0.0.1:{status.port}, runs as {status.run_as}.")
    print(f"DATABASE_URL is in {cluster.env_path} (`make db-url` shows it).")


def cmd_stop(args) -> None:
    if _external_guard():
        return
    print("Stopped the course server." if Cluster().stop() else "The course server was not running.")


def cmd_status(args) -> None:
    values = envfile.read(target.env_path())
    running = True
    if values.get("COURSE_SERVER") != "external":
        status = Cluster().status()
        print(status)
        running = status.running
    url = values.get("DATABASE_URL")
    print(f"DATABASE_URL  {mask(url) if url else '(not set: `make db-start` writes it)'}")
    if not running:
        print("The server is stopped: `make db-start` starts it.")
    elif url:
        try:
            print(check_database(url))
        except CourseError as exc:
            print(f"DATABASE_URL does not connect: {exc.message}\nFix: run `make db-start` (it repairs .env).")


def _say_ended(ended: list, whose: str, reconnect: str, none: str) -> None:
    """Name the sessions a reset ended (or say that none was connected)."""
    if not ended:
        print(none)
        return
    print(f"Ended {len(ended)} session(s) {whose}:")
    for session in ended:
        print(f"  {session}")
    print(f"{reconnect}: rerun them from the top.")


def cmd_reset(args) -> None:
    tgt = target.load(start=False)
    started = time.perf_counter()
    ended = provision.clone(tgt.admin, provision.COURSE_DB)
    print(f"Recreated the database {provision.COURSE_DB!r} from {provision.TEMPLATE_DB!r}"
          f" in {time.perf_counter() - started:.2f} s.")
    _say_ended(ended, "that were connected to it", "Notebooks that were connected must reconnect",
               "No session was connected to it.")


def cmd_url(args) -> None:
    url = envfile.read(target.env_path()).get("DATABASE_URL")
    if not url:
        raise CourseError("There is no DATABASE_URL yet.", "run `make db-start`")
    print(url if args.reveal else mask(url))
    if not args.reveal:
        print(f"(password hidden; `{CLI} db url --reveal` prints it)", file=sys.stderr)


def cmd_psql(args) -> None:
    tgt = target.load(start=False, say=lambda *a: None)
    binaries = tgt.cluster.binaries if tgt.cluster else None
    psql = binaries["psql"] if binaries else "psql"
    conninfo = tgt.admin.conninfo if args.admin else tgt.database_url
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(psql, [psql, conninfo, *args.extra])


def cmd_provision(args) -> None:
    admin = provision.Admin(args.url)
    learner, limited = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    provision.provision(admin, learner, limited, scale=args.scale, rebuild=args.rebuild,
                        whole_server=args.whole_server, report=True)
    with admin.connect() as conn:
        info = conn.info
        host, port = info.host, info.port
    if host.startswith("/"):
        raise CourseError("That URL reaches the server over a unix socket; the course connects over TCP.",
                          "give a URL with a host name, e.g. postgresql://postgres:...@localhost:5432/postgres")
    envfile.write(target.env_path(), {
        "DATABASE_URL": provision.learner_url(host, port, learner),
        "LIMITED_DATABASE_URL": provision.learner_url(host, port, limited, user=provision.LIMITED),
        "COURSE_ADMIN_URL": args.url,
    }, server="external")
    print(f"Provisioned the course on {host}:{port}. .env now points the course at that server"
          " (it also keeps the admin URL for `make db-reset` and `make test`).")
    print(f"`{CLI} db use-bundled` switches back to the bundled server.")


def cmd_use_bundled(args) -> None:
    path = target.env_path()
    if envfile.read(path).get("COURSE_SERVER") == "external":
        path.unlink()
    Cluster().start()
    print("The course uses the bundled server again.")


def cmd_destroy(args) -> None:
    if not args.yes:
        raise CourseError("This deletes the bundled server's data directory and every change you made.",
                          "run `make db-destroy YES=1` if that is what you want")
    cluster = Cluster()
    cluster.destroy()
    if envfile.read(cluster.env_path).get("COURSE_SERVER") == "bundled":
        cluster.env_path.unlink()
    print(f"Deleted {cluster.state}. `make db-start` creates a new server.")


def cmd_lab(args) -> None:
    tgt = target.load()
    os.environ.update(tgt.environment())
    jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
    extra = ["--no-browser"] if args.no_browser or os.environ.get("CI") else []
    if os.geteuid() == 0:  # JupyterLab refuses root without it (containers, CI)
        extra.append("--allow-root")
    print(f"Starting JupyterLab with DATABASE_URL={mask(tgt.database_url)}")
    print("The course server keeps running after JupyterLab exits; `make db-stop` stops it.")
    os.chdir(ROOT)
    sys.stdout.flush()  # exec replaces this process: what we printed must reach a pipe (| tee, a CI log) first
    sys.stderr.flush()
    os.execv(jupyter, [jupyter, "lab", *extra, *args.extra])


def cmd_run(args) -> None:
    """Run a command with the environment `make lab` gives kernels (DATABASE_URL, the bundled psql first)."""
    command = [a for a in args.extra if a != "--"] if args.extra[:1] == ["--"] else args.extra
    if not command:
        raise CourseError("Give the command to run.", f"e.g. `{CLI} run -- psql -c 'select 1'`")
    tgt = target.load(say=lambda message: print(message, file=sys.stderr))  # stdout is the command's alone
    os.environ.update(tgt.environment())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        raise CourseError(f"There is no command {command[0]!r} on the PATH.", "check its spelling") from None


def cmd_execute(args) -> None:
    from nbclient.exceptions import CellExecutionError

    from .notebooks import execute_in_place

    for path in args.notebooks:
        try:
            seconds = execute_in_place(path)
        except CellExecutionError as exc:
            raise CourseError(f"{path} stopped at a cell that raised an error (left unchanged):\n{exc}",
                              "fix the cell, or tag it raises-exception if it is meant to fail") from None
        print(f"executed {path} in {seconds:.1f} s")


def cmd_binder_link(args) -> None:
    from .binderlink import main

    main(args.repo, args.branch)


# ---- a room (instructors) ---------------------------------------------------------------------------
def _room_admin(args, room_server: dict | None = None) -> tuple[provision.Admin, dict]:
    """The admin of the room's server, and that server (host, port, kind): --admin-url for an external
    server (used once, not saved), else the course's own target (the bundled server, started if needed)."""
    if args.admin_url:
        admin = provision.Admin(args.admin_url)
        with admin.connect() as conn:
            host, port = conn.info.host, conn.info.port
        if host.startswith("/"):
            raise CourseError("That URL reaches the server over a unix socket; learners connect over TCP.",
                              "give a URL with a host name, e.g. postgresql://postgres:...@db.example:5432/postgres")
        return admin, {"host": host, "port": port, "kind": "external"}
    tgt = target.load(start=room_server is None or room_server.get("kind") == "bundled")
    parts = urlsplit(tgt.database_url)
    server = {"host": parts.hostname, "port": parts.port or 5432, "kind": tgt.kind}
    if room_server is not None and room_server != server:
        raise CourseError(f"The room is on {room_server['kind']} server {room_server['host']}:{room_server['port']},"
                          " which is not the course's server.", "give its superuser URL with --admin-url")
    return tgt.admin, server


def cmd_room_create(args) -> None:
    from . import room

    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
    else:
        width = max(2, len(str(args.learners)))
        names = [f"learner{i:0{width}d}" for i in range(1, args.learners + 1)]
    if not args.names and not 1 <= args.learners <= 999:
        raise CourseError(f"A room of {args.learners} learners?", "give --learners 1 to 999")
    from .roomenv import MIN_CONNECTION_LIMIT

    if args.connection_limit is not None and args.connection_limit < MIN_CONNECTION_LIMIT:
        print(f"Note: a limit of {args.connection_limit} is below {MIN_CONNECTION_LIMIT}, the most connections a lesson"
              " that does not adapt to the room holds at once (07a): that lesson will fail with 'too many connections"
              " for role'. Lesson 03a sends fewer requests and says so.")
    path = room.room_file()
    existing = room.Room.load(path).server if path.exists() else None
    admin, server = _room_admin(args, existing if not args.admin_url else None)
    started = time.perf_counter()
    ask = None
    if sys.stdin.isatty():
        def ask(question: str) -> bool:
            return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    made = room.create(admin, names, host=server["host"], port=server["port"], kind=server["kind"],
                       connection_limit=args.connection_limit, path=path, restart=args.restart, ask=ask)
    print(f"The room of {len(made.learners)} is ready ({time.perf_counter() - started:.1f} s). `make room-list` shows it;"
          " docs/instructor.md and docs/jupyterhub.md say how to hand out the URLs.")


def cmd_room_reset(args) -> None:
    from . import room

    loaded = room.Room.load(room.room_file())
    admin, _ = _room_admin(args, loaded.server)
    started = time.perf_counter()
    ended = room.reset(admin, loaded, args.name)
    learner = loaded.learners[args.name]
    print(f"Recreated {learner.database!r} from {provision.TEMPLATE_DB!r} in {time.perf_counter() - started:.2f} s.")
    _say_ended(ended, f"of {args.name}", "Their notebooks must reconnect",
               f"No session of {args.name} was connected to it.")


def cmd_room_drop(args) -> None:
    from . import room

    loaded = room.Room.load(room.room_file())
    names = args.names or None
    who = ", ".join(names) if names else f"all {len(loaded.learners)} learners"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CourseError(f"This drops the roles and databases of {who} (their work is lost).",
                              "run `make room-drop YES=1` (or add --yes) if that is what you want")
        answer = input(f"Drop the roles and databases of {who}? Their work is lost. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing dropped.")
            return
    admin, _ = _room_admin(args, loaded.server)
    room.drop(admin, loaded, names, path=room.room_file())


def cmd_room_list(args) -> None:
    from . import room

    loaded = room.Room.load(room.room_file())
    admin, _ = _room_admin(args, loaded.server)
    rows = room.listing(admin, loaded)
    server = loaded.server
    print(f"Room on {server['kind']} server {server['host']}:{server['port']}: {len(rows)} learner(s),"
          f" {loaded.connection_limit} connections each; the server needs max_connections >= {loaded.max_connections}.")
    print(f"  {'learner':<17}{'database':<23}{'ready':<7}{'sessions':>9}{'limit':>7}")
    for row in rows:
        limit = "-" if row["limit"] is None else row["limit"]
        print(f"  {row['name']:<17}{row['database']:<23}{'yes' if row['exists'] else 'NO':<7}"
              f"{row['sessions']:>9}{limit:>7}")


def cmd_room_board(args) -> None:
    from . import board

    main = getattr(board, "main", None)
    if main is None:
        raise CourseError("The progress board is not available in this version of the course.", "update the course")
    main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pgcourse", description=__doc__)
    top = parser.add_subparsers(dest="command", required=True)
    db = top.add_parser("db", help="the course's PostgreSQL server").add_subparsers(dest="action", required=True)
    db.add_parser("start", help="start the bundled server (create it on first start)").set_defaults(func=cmd_start)
    db.add_parser("stop", help="stop the bundled server").set_defaults(func=cmd_stop)
    db.add_parser("status", help="is it running, where, and does DATABASE_URL work").set_defaults(func=cmd_status)
    db.add_parser("reset", help="recreate the course database from the template").set_defaults(func=cmd_reset)
    url = db.add_parser("url", help="print DATABASE_URL (password hidden)")
    url.add_argument("--reveal", action="store_true", help="print the password too")
    url.set_defaults(func=cmd_url)
    psql = db.add_parser("psql", help="open psql as the learner (or --admin)")
    psql.add_argument("--admin", action="store_true", help="connect as the admin role over the unix socket")
    psql.set_defaults(func=cmd_psql)
    prov = db.add_parser("provision", help="set the course up on your own server, given a superuser URL")
    prov.add_argument("url")
    prov.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    prov.add_argument("--rebuild", action="store_true", help="reload the sample data even if present")
    prov.add_argument("--whole-server", action="store_true",
                      help="the server is yours alone: also grant pg_read_all_stats and pg_stat_statements_reset")
    prov.set_defaults(func=cmd_provision)
    db.add_parser("use-bundled", help="switch back from your own server").set_defaults(func=cmd_use_bundled)
    destroy = db.add_parser("destroy", help="stop the bundled server and delete its data")
    destroy.add_argument("--yes", action="store_true")
    destroy.set_defaults(func=cmd_destroy)
    room = top.add_parser("room", help="a room: a role and a database per learner on one server (instructors)")
    rooms = room.add_subparsers(dest="action", required=True)
    admin_url = argparse.ArgumentParser(add_help=False)
    admin_url.add_argument("--admin-url", default="",
                           help="a superuser URL of an external server (used once, not saved); default: the course's")
    create = rooms.add_parser("create", parents=[admin_url], help="create the room, or add learners to it")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--learners", type=int, help="how many: learner01, learner02, ...")
    who.add_argument("--names", help="comma-separated names (e.g. the hub's user names)")
    create.add_argument("--connection-limit", type=int, default=None,
                        help="each learner role's CONNECTION LIMIT (default: pgcourse.roomenv.PER_LEARNER)")
    create.add_argument("--restart", action="store_true",
                        help="restart the bundled server if the room needs more connections, even with sessions open"
                             " (without it: asks on a terminal, refuses otherwise)")
    create.set_defaults(func=cmd_room_create)
    room_reset = rooms.add_parser("reset", parents=[admin_url], help="recreate one learner's database (ends its sessions)")
    room_reset.add_argument("name")
    room_reset.set_defaults(func=cmd_room_reset)
    room_drop = rooms.add_parser("drop", parents=[admin_url], help="drop learners' roles and databases (all by default)")
    room_drop.add_argument("names", nargs="*")
    room_drop.add_argument("--yes", action="store_true", help="do not ask")
    room_drop.set_defaults(func=cmd_room_drop)
    rooms.add_parser("list", parents=[admin_url], help="the learners, their databases and sessions now"
                     ).set_defaults(func=cmd_room_list)
    board = rooms.add_parser("board", help="the progress board: learners x exercises, refreshed live")
    board.add_argument("--once", action="store_true", help="print it once and exit")
    board.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    board.set_defaults(func=cmd_room_board)
    lab = top.add_parser("lab", help="start the server and JupyterLab with DATABASE_URL set")
    lab.add_argument("--no-browser", action="store_true")
    lab.set_defaults(func=cmd_lab)
    run = top.add_parser("run", help="run a command with the environment make lab gives notebooks: run -- CMD ...")
    run.set_defaults(func=cmd_run)
    binder = top.add_parser("binder-link", help="write the README's Binder badge for the origin's GitHub repository")
    binder.add_argument("--repo", default="", help="owner/name, instead of the origin remote's")
    binder.add_argument("--branch", default="main")
    binder.set_defaults(func=cmd_binder_link)
    execute = top.add_parser("execute", help="re-execute notebooks in place against a fresh database")
    execute.add_argument("notebooks", nargs="+")
    execute.set_defaults(func=cmd_execute)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.func not in (cmd_psql, cmd_lab, cmd_run):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        args.func(args)
    except CourseError as exc:
        print(exc.text, file=sys.stderr)
        return 1
    return 0
