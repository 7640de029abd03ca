# The two commands: `make demo` and `make test`. Everything a fresh machine needs is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
export ERPMAIL_TEST_DB_URL ?= postgresql://postgres@127.0.0.1:5432/test

# Debian packages: Pango, HarfBuzz's subsetter (WeasyPrint's fast font subsetting) and fonts
# for WeasyPrint; for the tests Dovecot (IMAP), Redis (the Celery broker of the end-to-end
# test), chromium (browser tests) and docker-compose (checks the compose file; no engine).
RUNTIME_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core
TEST_PACKAGES := $(RUNTIME_PACKAGES) dovecot-imapd redis-server chromium docker-compose

.PHONY: venv system-packages postgres lint test demo bench clean up down

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# Installs the Debian packages named by PACKAGES that are missing (as root), else says which.
PACKAGES ?= $(TEST_PACKAGES)
system-packages:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "erpmail needs these Debian packages: sudo apt-get install $$missing" >&2; exit 1; \
	  fi; \
	fi

# Start the machine's PostgreSQL cluster and Redis when they are installed but down.
postgres:
	@if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  if command -v pg_ctlcluster >/dev/null; then \
	    for v in $$(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect $$v main start || true; done; \
	  fi; \
	fi
	@if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv system-packages postgres lint
	@$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

demo: venv
	@$(MAKE) -s system-packages PACKAGES="$(RUNTIME_PACKAGES)"
	$(VENV)/bin/erpmail demo

bench: venv system-packages postgres
	for b in pdf send import retention campaign dunning signing; do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf var/demo var/archive

# The team deployment (docker-compose.yaml, README "Run it for a team"): needs Docker and .env.
up:
	@test -f .env || { echo "copy .env.example to .env and fill in its secrets first" >&2; exit 1; }
	docker compose --profile mail up -d --build

down:
	docker compose --profile mail down
