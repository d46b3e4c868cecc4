# aiworker developer commands. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch as pip is configured to find it: PyPI's Linux wheel is the CUDA build; for the CPU one
# add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu. Other torch builds work too.
TORCH_SPEC ?= torch==2.13.0

# Python for the Python RedisAI clients' own environments (SmartRedis' wheels need 3.9-3.11;
# redisai-py needs numpy < 2)
SMARTREDIS_PYTHON ?= $(shell command -v python3.11 || command -v python3.10 || command -v python3.9 || echo $(PYTHON))
SMARTREDIS_ENV := tests/gateway_smartredis/.venv
REDISAI_PY_ENV := tests/gateway_redisai_py/.venv
# The Go client program builds on redigo from GOPATH (Debian: golang-github-gomodule-redigo-dev)
GO_PATH ?= /usr/share/gocode
GO_CLIENT := tests/gateway_go/client

.PHONY: install test-clients demo test test-valkey test-quick lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

# The RedisAI clients the gateway's tests drive besides redis-py and redis-cli: Node programs on
# ioredis and node-redis, SmartRedis (SmartSim's client) and redisai-py (RedisAI's own, on
# redis-py 4), each in an environment of its own, and a Go program on redigo (redisai-go's
# library).
test-clients: tests/gateway_node/node_modules/.package-lock.json $(SMARTREDIS_ENV)/.installed \
	$(REDISAI_PY_ENV)/.installed $(GO_CLIENT)

tests/gateway_node/node_modules/.package-lock.json: tests/gateway_node/package-lock.json
	npm ci --prefix tests/gateway_node --no-audit --no-fund

$(SMARTREDIS_ENV)/.installed: tests/gateway_smartredis/requirements.txt
	$(SMARTREDIS_PYTHON) -m venv $(SMARTREDIS_ENV)
	$(SMARTREDIS_ENV)/bin/python -m pip install -q -r tests/gateway_smartredis/requirements.txt
	touch $@

$(REDISAI_PY_ENV)/.installed: tests/gateway_redisai_py/requirements.txt
	$(SMARTREDIS_PYTHON) -m venv $(REDISAI_PY_ENV)
	$(REDISAI_PY_ENV)/bin/python -m pip install -q -r tests/gateway_redisai_py/requirements.txt
	touch $@

$(GO_CLIENT): tests/gateway_go/client.go
	GO111MODULE=off GOPATH=$(GO_PATH) GOCACHE=$(CURDIR)/tests/gateway_go/.cache go build -o $@ $<

demo: install
	$(PY) -m aiworker.demo

test: install test-clients
	$(PY) -m pytest -q

# The tests most sensitive to the Redis server (the gateway's wire and its clients, Redis full,
# ACLs, the cluster and its resharding, flushes and restarts, redis-cli), run on Valkey
# (`valkey-server` on PATH; CI runs them after `make test`)
VALKEY_TESTS := tests/test_gateway.py tests/test_gateway_hostile.py tests/test_gateway_resp3.py \
	tests/test_gateway_client_wire.py tests/test_gateway_redisai_suite.py \
	tests/test_gateway_clients.py tests/test_redis_full.py tests/test_security.py \
	tests/test_cluster.py tests/test_cluster_migration.py tests/test_flush.py \
	tests/test_redis_restart.py tests/test_redis_cli.py tests/test_job_path.py

test-valkey: install test-clients
	AIWORKER_REDIS_SERVER=valkey-server AIWORKER_REDIS_CLI=valkey-cli $(PY) -m pytest -q $(VALKEY_TESTS)

test-quick: install test-clients
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check aiworker tests bench
	$(VENV)/bin/ruff format --check aiworker tests bench
	$(VENV)/bin/mypy aiworker

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(SMARTREDIS_ENV) $(REDISAI_PY_ENV) tests/gateway_node/node_modules .pytest_cache .mypy_cache .ruff_cache \
		$(GO_CLIENT) tests/gateway_go/.cache
