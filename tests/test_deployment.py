"""The compose deployment, proven without a Docker engine.

Each compose service's command and environment run as local processes against a local
redis-server started with the compose Redis config; a job submitted with redis-cli completes.
The Dockerfile's install steps are checked against the Makefile's (the README's install path).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from conftest import ROOT, worker_env

from aiworker import Client
from aiworker.embedded import RedisServer
from aiworker.storage import health

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CLUSTER_COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())


def service(name: str) -> dict[str, Any]:
    return dict(COMPOSE["services"][name])


def local_command(command: list[str]) -> list[str]:
    """The container's ``aiworker ...`` as this checkout's ``python -m aiworker ...``."""
    if command[0] == "aiworker":
        return [sys.executable, "-m", "aiworker", *command[1:]]
    return command


def local_env(environment: dict[str, str], port: int) -> dict[str, str]:
    """The service's variables with the compose host name ``redis`` pointed at the local server."""
    env = {
        k: str(v).replace("redis://redis:6379", f"redis://127.0.0.1:{port}")
        for k, v in environment.items()
    }
    return worker_env(**env)


def healthcheck(name: str) -> list[str]:
    test = service(name)["healthcheck"]["test"]
    assert test[0] == "CMD", "health checks use the exec form"
    return list(test[1:])


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server with config/redis.conf; only port, bind address and data dir are local."""
    command = service("redis")["command"]
    assert command[0] == "redis-server" and command[1].endswith("redis.conf")
    with RedisServer(config_file=ROOT / "config" / "redis.conf", directory=tmp_path) as server:
        yield server


def wait_healthy(command: list[str], env: dict[str, str], timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(local_command(command), env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, f"health check never passed: {done.stderr}"
        time.sleep(0.5)


@pytest.mark.slow
def test_compose_services_run_as_local_processes(compose_redis: RedisServer) -> None:
    port = compose_redis.port
    r = redis.Redis(port=port)
    assert r.config_get("appendonly")["appendonly"] == "yes", "compose Redis keeps an AOF"
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

    workers = {}
    try:
        for name in ("worker-cpu", "worker-gpu"):
            spec = service(name)
            env = local_env(spec["environment"], port)
            workers[name] = (
                subprocess.Popen(
                    local_command(spec["command"]),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
                env,
            )
        for name, (_, env) in workers.items():
            assert "healthy" in wait_healthy(healthcheck(name), env)

        client = Client(port=port)
        client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add"}).encode())
        cli = shutil.which("redis-cli")
        assert cli is not None
        base = [cli, "-p", str(port)]
        for key, values in (("x", "1 2"), ("y", "10 20")):
            subprocess.run(
                [
                    *base,
                    "HSET",
                    key,
                    "kind",
                    "tensor",
                    "dtype",
                    "FLOAT",
                    "shape",
                    "2",
                    "values",
                    values,
                ],
                check=True,
                capture_output=True,
            )
        subprocess.run(
            [*base, "XADD", "aiworker:queue:CPU", "*", "cmd",
             "AI.MODELEXECUTE m INPUTS 2 x y OUTPUTS 1 z", "reply", "r1"],
            check=True, capture_output=True,
        )  # fmt: skip
        popped = subprocess.run(
            [*base, "BLPOP", "r1", "30"], check=True, capture_output=True, text=True
        )
        reply = json.loads(popped.stdout.strip().splitlines()[-1])
        assert reply["status"] == "ok", reply
        assert client.tensorget("z").tolist() == [11.0, 22.0]
    finally:
        for proc, _ in workers.values():
            proc.send_signal(signal.SIGTERM)
        for name, (proc, _) in workers.items():
            assert proc.wait(timeout=60) == 0, f"{name} did not stop cleanly"
            if proc.stderr:
                proc.stderr.close()


def _pip_installs(lines: list[str]) -> list[list[str]]:
    """The package arguments of each ``pip install`` (options and quotes dropped)."""
    found = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part.replace("\\\n", " "))
            if "pip" in words and "install" in words:
                args = words[words.index("install") + 1 :]
                found.append([a for a in args if not a.startswith("-")])
    return found


def test_dockerfile_installs_like_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    make_vars = dict(re.findall(r"^(\w+) \?= (.+)$", makefile, re.M))
    docker_args = dict(re.findall(r"^ARG (\w+)=(.+)$", dockerfile, re.M))
    assert make_vars["TORCH_SPEC"] == docker_args["TORCH_SPEC"], "same default PyTorch build"

    recipe = re.search(r"^\$\(VENV\)/\.installed:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    make_steps = _pip_installs(recipe.group(1).splitlines())
    docker_steps = _pip_installs(
        [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    )

    def normalise(steps: list[list[str]], values: dict[str, str]) -> list[list[str]]:
        out = []
        for step in steps:
            words = []
            for word in step:
                for name, value in values.items():
                    word = word.replace(f"$({name})", value).replace(f"${{{name}}}", value)
                words.append(re.sub(r"\[.*\]", "[extras]", word))
            out.append(words)
        return out

    assert normalise(make_steps, make_vars) == normalise(docker_steps, docker_args)
    assert "dev" not in docker_args["EXTRAS"], "the image carries no test tools"
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "the image runs as a non-root user"


WORKERS = [(COMPOSE, name) for name in COMPOSE["services"] if name.startswith("worker-")]
WORKERS += [(CLUSTER_COMPOSE, n) for n in CLUSTER_COMPOSE["services"] if n.startswith("worker-")]


@pytest.mark.parametrize(("compose", "name"), WORKERS, ids=[f"{c['name']}-{n}" for c, n in WORKERS])
def test_compose_workers_are_confined(compose: dict[str, Any], name: str) -> None:
    """Models and scripts are code: a worker container runs as the image's non-root user with no
    capabilities, cannot gain privileges, and writes only to a tmpfs that TMPDIR names."""
    spec = dict(compose["services"][name])
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    assert uid is not None
    assert str(spec["user"]).split(":")[0] == uid.group(1) != "0"
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"] and not spec.get("cap_add")
    assert "no-new-privileges:true" in spec["security_opt"]
    assert not spec.get("privileged")
    mounts = [entry.split(":")[0] for entry in spec["tmpfs"]]
    assert spec["environment"]["TMPDIR"] in mounts


@pytest.mark.slow
def test_cluster_compose_runs_as_local_processes(tmp_path: Path) -> None:
    """docker-compose.cluster.yml without Docker: its six nodes' command (config/redis.conf plus
    the cluster flags) as local redis-servers, the cluster created as ``cluster-init`` does, and
    the worker service's command and environment pointed at the first node: it finds the
    cluster, serves the CPU queue in partitions, passes its health check, and a job written with
    redis-cli -c completes."""
    from aiworker.embedded import LocalCluster

    services = CLUSTER_COMPOSE["services"]
    nodes = [services[f"redis-{n}"] for n in range(1, 7)]
    command = nodes[0]["command"]
    assert all(node["command"] == command for node in nodes)
    assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "--cluster-enabled" in command
    init = " ".join(services["cluster-init"]["command"])
    assert "--cluster create" in init and "--cluster-replicas 1 --cluster-yes" in init
    spec = dict(services["worker-cpu"])
    assert spec["depends_on"] == {"cluster-init": {"condition": "service_completed_successfully"}}
    with LocalCluster(3, 1, ROOT / "config" / "redis.conf", command[2:]) as cluster:
        url = cluster.url.rsplit("/", 1)[0]
        env = {
            k: str(v).replace("redis://redis-1:6379", url) for k, v in spec["environment"].items()
        }
        env = worker_env(**env)
        worker = subprocess.Popen(
            local_command(spec["command"]), env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert "healthy" in wait_healthy(list(spec["healthcheck"]["test"][1:]), env)
            client = Client.from_url(cluster.url)
            client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add"}).encode())
            cli = shutil.which("redis-cli")
            assert cli is not None
            base = [cli, "-c", "-p", str(cluster.ports[0])]
            for key, values in (("x", "1 2"), ("y", "10 20")):
                subprocess.run([*base, "HSET", key, "kind", "tensor", "dtype", "FLOAT",
                                "shape", "2", "values", values], check=True, capture_output=True)  # fmt: skip
            subprocess.run(
                [*base, "XADD", "aiworker:queue:CPU", "*", "cmd",
                 "AI.MODELEXECUTE m INPUTS 2 x y OUTPUTS 1 z{job}", "reply", "r{job}"],
                check=True, capture_output=True,
            )  # fmt: skip
            popped = subprocess.run(
                [*base, "BLPOP", "r{job}", "30"], check=True, capture_output=True, text=True
            )
            reply = json.loads(popped.stdout.strip().splitlines()[-1])
            assert reply["status"] == "ok", reply
            assert client.tensorget("z{job}").tolist() == [11.0, 22.0]
            status = health.gather(client, client.keyspace)
            assert len([q for q in status["queues"] if q["device"] == "CPU"]) == 3
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0, "the worker did not stop cleanly"
            if worker.stderr:
                worker.stderr.close()
