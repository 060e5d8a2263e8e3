# Postgres from Python: every entry point of the course. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     ?= $(wildcard notebooks/*.ipynb solutions/*.ipynb)
PG15   ?= /usr/lib/postgresql/15/bin

.DEFAULT_GOAL := help
.PHONY: help venv lab run test test-pythons test-pg15 binder-link execute exercises nav lint lock db-start db-stop db-status db-reset db-url db-psql db-provision db-destroy docker-up docker-down clean

# A target's comment says who it is for: `## ` the learner's commands, `#: ` the authors', `#room: ` an
# instructor's (make help lists them apart, so that a learner does not run a command that rewrites course files).
help: ## list the targets
	@echo "Taking the course:"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo
	@echo "Writing the course (for authors: they rewrite course files or take a long time):"
	@grep -E '^[a-z0-9-]+:.*#: ' $(MAKEFILE_LIST) | awk -F':.*#: ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo
	@echo "Teaching a room (for instructors: one server, a role and a database per learner; docs/instructor.md):"
	@grep -E '^[a-z0-9-]+:.*#room: ' $(MAKEFILE_LIST) | awk -F':.*#room: ' '{printf "  make %-15s %s\n", $$1, $$2}'

# PYTHON given on the command line and .venv made by another Python: make it again with that one.
ifeq ($(origin PYTHON),command line)
ifneq ($(wildcard $(PY)),)
ifneq ($(shell $(PY) -c 'import sys; print(sys.version_info[:2])' 2>/dev/null),$(shell $(PYTHON) -c 'import sys; print(sys.version_info[:2])' 2>/dev/null))
$(shell rm -f $(STAMP))
REBUILD_VENV := 1
endif
endif
endif

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "The course needs Python 3.11 or later; run make with PYTHON=python3.11 (or newer).")'
	@$(if $(REBUILD_VENV),echo "$(VENV) was made by another Python than $(PYTHON): making it again." && rm -rf $(VENV))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "Could not create $(VENV): install your Python's venv module (Debian/Ubuntu: apt install python3-venv)."; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP) ## create .venv with the pinned requirements (done by every target that needs it)

lab: $(STAMP) ## start the course server and JupyterLab, with DATABASE_URL set
	$(PY) -m pgcourse lab

test: $(STAMP) ## run every test and every notebook against the bundled server (starts it if needed)
	$(PY) -m pytest

test-pythons: #: run `make test` with every Python 3.11-3.13 found (pyenv or PATH), each in its own .venv-3.X; a line per version
	@sh tools/test-pythons.sh

test-pg15: $(STAMP) #: run the escape suite, the staging validation's fallback and the notebooks on Debian's PostgreSQL 15 (notebooks in nbval lax: errors only, no output comparison)
	PGCOURSE_BINDIR=$(PG15) PGCOURSE_STATE=.pgdata-pg15 PGCOURSE_ENV=.env-pg15 $(PY) -m pytest --nbval-lax tests/test_escape.py tests/test_staging_validation.py notebooks solutions

execute: $(STAMP) #: re-execute notebooks in place against a fresh database (NB=path to pick some)
	$(PY) -m pgcourse execute $(NB)

exercises: $(STAMP) #: write exercises/ from solutions/ (answers become stubs); refuses to overwrite edited ones unless FORCE=1
	@$(PY) -c 'import sys; from pgcourse.exercises import main; sys.exit(main(force="$(FORCE)" not in ("", "0", "no", "false")))'

binder-link: $(STAMP) #: write the README's Binder badge for the GitHub repository in `git remote get-url origin` (or REPO=owner/name)
	@$(PY) -m pgcourse binder-link $(if $(REPO),--repo $(REPO)) $(if $(BRANCH),--branch $(BRANCH))

nav: $(STAMP) #: regenerate the previous / contents / next cell of every lesson and exercises notebook
	$(PY) -c 'from pgcourse.authoring import SOLUTIONS, lessons, write_nav; [print("updated", p.name) for p in [*lessons(), *sorted(SOLUTIONS.glob("*.ipynb"))] if write_nav(p)]'

lint: $(STAMP) #: ruff on the package, tests, benchmarks and notebooks
	$(PY) -m ruff check pgcourse tests benchmarks $(wildcard notebooks solutions exercises)

lock: $(STAMP) #: regenerate requirements.txt from requirements.in (pins every package)
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile requirements.in -o requirements.txt --python-version 3.11 --quiet

.PHONY: bench-memory
bench-memory: $(STAMP) #: peak memory (PSS) of each lesson's Run-All as on a 2 GB machine; fails over 1.5 GB (ARGS='--machine host' as this one is)
	$(PY) benchmarks/memory.py $(ARGS)

.PHONY: bench-web-api
bench-web-api: $(STAMP) #: lesson 09's service under a bigger load than the notebooks run: a line per pool size (ARGS='--requests 10000 --pools 4,8,16 --workers 2')
	$(PY) benchmarks/web_api.py $(ARGS)

db-start: $(STAMP) ## start the bundled server (creates it and loads the data on first start)
	@$(PY) -m pgcourse db start

db-stop: $(STAMP) ## stop the bundled server
	@$(PY) -m pgcourse db stop

db-status: $(STAMP) ## is the server running, where, and does DATABASE_URL work
	@$(PY) -m pgcourse db status

db-reset: $(STAMP) ## recreate the course database from the pristine template (ends its sessions)
	@$(PY) -m pgcourse db reset

db-url: $(STAMP) ## print DATABASE_URL (password hidden)
	@$(PY) -m pgcourse db url

db-psql: $(STAMP) ## open psql as the learner; give it arguments with ARGS, e.g. make db-psql ARGS='-c "select 1"'
	@$(PY) -m pgcourse db psql $(value ARGS)

run: $(STAMP) ## run a command with the environment make lab gives notebooks, e.g. make run CMD='psql "$DATABASE_URL" -c "select 1"'
	@$(if $(value CMD),,echo "Give the command, e.g. make run CMD='psql \"\$$DATABASE_URL\" -c \"select version()\"'"; exit 1)
	@$(PY) -m pgcourse run -- sh -c '$(subst ','"'"',$(value CMD))'

db-provision: $(STAMP) ## set the course up on your own server: make db-provision URL=postgresql://superuser:...@host/db [WHOLE_SERVER=1]
	@test -n "$(URL)" || { echo "Give the URL of a superuser on your server: make db-provision URL=postgresql://..."; exit 1; }
	@$(PY) -m pgcourse db provision "$(URL)" $(if $(WHOLE_SERVER),--whole-server)

db-destroy: $(STAMP) ## stop the bundled server and delete its data: make db-destroy YES=1
	@$(PY) -m pgcourse db destroy $(if $(YES),--yes)

.PHONY: room-create room-reset room-drop room-list room-board
room-create: $(STAMP) #room: create a room, or add to it: make room-create N=30 (learner01..30) or NAMES=alice,bob [LIMIT=40] [RESTART=1] [ADMIN_URL=postgresql://...]
	@test -n "$(N)$(NAMES)" || { echo "Say who: make room-create N=30, or NAMES=alice,bob (the hub's user names)"; exit 1; }
	@$(PY) -m pgcourse room create $(if $(NAMES),--names "$(NAMES)",--learners "$(N)") $(if $(LIMIT),--connection-limit "$(LIMIT)") $(if $(RESTART),--restart) $(if $(ADMIN_URL),--admin-url "$(ADMIN_URL)")

room-reset: $(STAMP) #room: recreate one learner's database from the template, ending its sessions: make room-reset L=alice
	@test -n "$(L)" || { echo "Say whose: make room-reset L=alice (make room-list lists them)"; exit 1; }
	@$(PY) -m pgcourse room reset "$(L)" $(if $(ADMIN_URL),--admin-url "$(ADMIN_URL)")

room-drop: $(STAMP) #room: drop every learner's roles and databases (asks first; YES=1 does not)
	@$(PY) -m pgcourse room drop $(if $(YES),--yes) $(if $(ADMIN_URL),--admin-url "$(ADMIN_URL)")

room-list: $(STAMP) #room: the room's learners, their databases, sessions now and connection limits
	@$(PY) -m pgcourse room list $(if $(ADMIN_URL),--admin-url "$(ADMIN_URL)")

room-board: $(STAMP) #room: the progress board, refreshed live (ONCE=1 prints it once)
	@$(PY) -m pgcourse room board $(if $(ONCE),--once)

.PHONY: bench-room
bench-room: $(STAMP) #: a room of 30 on a bundled server of its own, lessons 00 and 03 in 30 kernels at once: failures (those others caused first), peak sessions, time against alone (ARGS='--learners 10 --notebooks 00_welcome,03a_connection_pooling')
	$(PY) benchmarks/room.py $(ARGS)

docker-up: ## run the course in Docker: PostgreSQL 18 and JupyterLab on http://127.0.0.1:8888 (needs Docker Compose)
	@sh docker/new-env.sh
	LAB_UID=$$(id -u) docker compose --env-file docker/.env -f docker/compose.yaml up --build --detach
	@echo "JupyterLab: http://127.0.0.1:8888/lab?token=$$(sed -n 's/^JUPYTER_TOKEN=//p' docker/.env)"

docker-down: ## stop the Docker set-up (its database stays in a Docker volume for next time)
	docker compose --env-file docker/.env -f docker/compose.yaml down

clean: ## remove .venv and caches (keeps the server's data; see db-destroy)
	rm -rf $(VENV) .pytest_cache .ruff_cache
