"""JupyterHub configuration for a room of the course (docs/jupyterhub.md explains the deployment).

Each learner's server gets that learner's environment from the room file that
`python -m pgcourse room create` writes (`.room/room.json`): `DATABASE_URL`, `LIMITED_DATABASE_URL`,
`COURSE_LEARNER` and `COURSE_CONNECTION_LIMIT`. A user who is not in the room gets no server, and is
told why. The spawner and the authenticator are the deployer's choice (The Littlest JupyterHub sets
its own), so this file sets neither; tests/test_jupyterhub.py loads it and adds a test pair.

The room file is read at every spawn, so learners added with `room create` need no hub restart. It
holds passwords: keep it readable by the hub's user only (`room create` makes it mode 600).
"""

import json
import os
from pathlib import Path

from tornado import web

c = get_config()  # noqa: F821 (JupyterHub's config loader provides it)

# Where the room file is: $PGCOURSE_ROOM_FILE, else .room/room.json in the course folder this file
# sits in (docs/..). A copy of this file elsewhere (e.g. /opt/tljh/config/jupyterhub_config.d/) needs
# the variable, or this line edited to the course folder's absolute path; a symbolic link to this file
# finds it as this file does.
ROOM_FILE = Path(os.environ.get("PGCOURSE_ROOM_FILE") or Path(__file__).resolve().parent.parent / ".room" / "room.json")


def room_environment(name: str, room_file: Path = ROOM_FILE) -> dict[str, str]:
    """The environment of learner `name` from the room file; an HTTP 403 saying why when there is none."""
    try:
        learners = json.loads(room_file.read_text())["learners"]
    except (OSError, ValueError, KeyError) as exc:
        raise web.HTTPError(403, f"No room file the hub can read at {room_file} ({type(exc).__name__}): "
                                 "the instructor runs `python -m pgcourse room create` first.") from None
    if name not in learners:
        raise web.HTTPError(403, f"{name!r} is not a learner of this room, so no database is waiting for them: "
                                 f"the instructor adds them with `python -m pgcourse room create --names {name}`.")
    return {key: str(value) for key, value in learners[name]["env"].items()}


def give_learner_environment(spawner) -> None:
    """pre_spawn_hook: the learner's server (and so every kernel it starts) gets their variables."""
    spawner.environment = {**spawner.environment, **room_environment(spawner.user.name)}


c.Spawner.pre_spawn_hook = give_learner_environment
