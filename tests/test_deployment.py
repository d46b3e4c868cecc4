"""The compose deployment, proven without a Docker engine.

Each compose service built from the Dockerfile runs as a local process with the argv Docker would
run in its container (the Dockerfile's ENTRYPOINT, then the service's command) and its
environment, against a local redis-server started with the compose Redis command and config; a
job submitted with redis-cli completes and its result reads back through the gateway. What a
Docker engine would add is checked from the files: ports published on the loopback only, one build
per image tag, the CPU image's torch from PyTorch's CPU index. The Dockerfile's install steps are
checked against the Makefile's (the README's install path).
"""

from __future__ import annotations

import json
import re
import shlex
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
from aiworker.devices import parse_device
from aiworker.embedded import RedisServer, cli_program, free_port
from aiworker.storage import health

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
CLUSTER_COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
COMPOSE_FILES = {"docker-compose.yml": COMPOSE, "docker-compose.cluster.yml": CLUSTER_COMPOSE}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def service(name: str) -> dict[str, Any]:
    return dict(COMPOSE["services"][name])


def local_command(command: list[str]) -> list[str]:
    """The container's ``aiworker ...`` as this checkout's ``python -m aiworker ...`` (and its
    ``python`` as this interpreter)."""
    if command[0] == "aiworker":
        return [sys.executable, "-m", "aiworker", *command[1:]]
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    return command


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments): comments dropped, continued lines
    joined."""
    instructions = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def instruction_argv(args: str) -> list[str]:
    """An ENTRYPOINT's or CMD's argv: the exec form (a JSON array), else the shell form, which
    Docker runs with ``/bin/sh -c``."""
    if args.startswith("["):
        try:
            return [str(word) for word in json.loads(args)]
        except json.JSONDecodeError:
            pass  # not JSON: Docker takes it as the shell form
    return ["/bin/sh", "-c", args]


def image_entrypoint_and_cmd(dockerfile: Path) -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the image that the Dockerfile's last stage builds (its base image's
    taken to have none: the aiworker image sets both)."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    cmd_set = False
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            entrypoint, cmd, cmd_set = [], [], False
        elif keyword == "ENTRYPOINT":
            entrypoint = instruction_argv(args)
            if not cmd_set:
                cmd = []  # Docker: a new ENTRYPOINT drops the CMD inherited from the base image
        elif keyword == "CMD":
            cmd, cmd_set = instruction_argv(args), True
    return entrypoint, cmd


def compose_argv(value: str | list[str]) -> list[str]:
    """A compose ``command``/``entrypoint``: a list as given, a string split as by a shell."""
    return shlex.split(value) if isinstance(value, str) else [str(word) for word in value]


def build_of(compose: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The service's ``build`` (its own, else that of a service building its image), normalised
    to context, dockerfile and args; None when its image comes from a registry."""
    services = compose["services"]
    spec = services[name]
    build = spec.get("build")
    if build is None:
        builders = [s for s in services.values() if s.get("image") == spec.get("image")]
        build = next((s["build"] for s in builders if s.get("build")), None)
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    return {
        "context": build.get("context", "."),
        "dockerfile": build.get("dockerfile", "Dockerfile"),
        "args": {k: str(v) for k, v in (build.get("args") or {}).items()},
    }


def built_services(compose: dict[str, Any]) -> list[str]:
    return [name for name in compose["services"] if build_of(compose, name) is not None]


def container_argv(compose: dict[str, Any], name: str) -> list[str]:
    """What Docker runs in the service's container: the image's ENTRYPOINT followed by the
    service's ``command`` (else the image's CMD); a service ``entrypoint`` replaces the image's
    ENTRYPOINT and drops its CMD."""
    spec = compose["services"][name]
    build = build_of(compose, name)
    assert build is not None, f"{name} runs an image this repository does not build"
    entrypoint, cmd = image_entrypoint_and_cmd(ROOT / build["context"] / build["dockerfile"])
    if spec.get("entrypoint") is not None:
        entrypoint, cmd = compose_argv(spec["entrypoint"]), []
    if spec.get("command") is not None:
        cmd = compose_argv(spec["command"])
    return entrypoint + cmd


def option_values(argv: list[str], option: str) -> list[str]:
    """The values given to ``option`` (``--opt VALUE`` or ``--opt=VALUE``, repeatable)."""
    values = []
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def local_redis_args(args: list[str]) -> list[str]:
    """A compose redis-server's options without its ``--bind`` (the container's interfaces):
    RedisServer binds the loopback."""
    out: list[str] = []
    skipping = False
    for word in args:
        if word == "--bind":
            skipping = True
        elif skipping and word.startswith("--"):
            skipping = False
        if not skipping:
            out.append(word)
    return out


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
    """The compose Redis command (config/redis.conf and its options); only port, bind address
    and data dir are local."""
    command = compose_argv(service("redis")["command"])
    assert command[0] == "redis-server" and command[1].endswith("redis.conf")
    with RedisServer(
        config_file=ROOT / "config" / "redis.conf",
        directory=tmp_path,
        extra_args=local_redis_args(command[2:]),
    ) as server:
        yield server


def wait_healthy(
    command: list[str],
    env: dict[str, str],
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 90.0,
) -> str:
    """Run the health check until it passes; fail at once if ``process`` (the service) exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"the service exited ({process.returncode}) before it was healthy: {err}")
        done = subprocess.run(local_command(command), env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, f"health check never passed: {done.stderr}"
        time.sleep(0.5)


def local_listen(argv: list[str], port: int) -> list[str]:
    """The gateway's argv listening on this host's loopback at ``port``, not on the container's
    interfaces."""
    (listen,) = option_values(argv, "--listen")
    assert listen.rsplit(":", 1)[0] == "0.0.0.0", (
        "in its container the gateway listens on every interface: Docker forwards the published "
        "port to the container's address"
    )
    i = argv.index("--listen")
    return [*argv[: i + 1], f"127.0.0.1:{port}", *argv[i + 2 :]]


@pytest.mark.slow
def test_compose_services_run_as_local_processes(compose_redis: RedisServer) -> None:
    port = compose_redis.port
    r = redis.Redis(port=port)
    assert r.config_get("appendonly")["appendonly"] == "yes", "compose Redis keeps an AOF"
    assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

    gateway_port = free_port()
    services = {}
    try:
        for name in ("worker-cpu", "worker-gpu", "gateway"):
            spec = service(name)
            argv = container_argv(COMPOSE, name)
            check = healthcheck(name)
            if name == "gateway":
                (listen,) = option_values(argv, "--listen")
                argv = local_listen(argv, gateway_port)
                container_port = f"port={listen.rsplit(':', 1)[1]}"
                assert any(container_port in word for word in check), check
                check = [w.replace(container_port, f"port={gateway_port}") for w in check]
            env = local_env(spec["environment"], port)
            proc = subprocess.Popen(
                local_command(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            services[name] = (proc, env, check)
        # a health check runs in the container as it is written, not through the ENTRYPOINT
        for name, (proc, env, check) in services.items():
            output = wait_healthy(check, env, proc)
            assert name == "gateway" or "healthy" in output

        client = Client(port=port)
        served = {
            device
            for w in health.gather(client, client.keyspace)["workers"]
            for device in w["devices"]
        }
        assert {"CPU", "GPU", "GPU:0"} <= served, "models stored for GPU and GPU:0 have a worker"
        client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add"}).encode())
        cli = cli_program()
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
        gateway = redis.Redis(port=gateway_port, protocol=2)
        values = gateway.execute_command("AI.TENSORGET", "z", "VALUES")
        assert [float(v) for v in values] == [11.0, 22.0], "the gateway serves AI.* commands"
        gateway.close()
    finally:
        for proc, _, _ in services.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {name: proc.wait(timeout=60) for name, (proc, _, _) in services.items()}
        for proc, _, _ in services.values():
            if proc.stderr:
                proc.stderr.close()
    assert codes == dict.fromkeys(services, 0), f"services did not stop cleanly: {codes}"


# pip install options whose value is the next word
_PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c",
                      "--constraint", "--target", "-t", "--prefix", "--root", "--platform"}  # fmt: skip


def _pip_install_args(lines: list[str]) -> list[list[str]]:
    """The arguments of each ``pip install`` (quotes dropped)."""
    found = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part.replace("\\\n", " "))
            if "pip" in words and "install" in words:
                found.append(words[words.index("install") + 1 :])
    return found


def _pip_installs(lines: list[str]) -> list[list[str]]:
    """The package arguments of each ``pip install`` (options, their values and quotes dropped)."""
    found = []
    for args in _pip_install_args(lines):
        packages = []
        skip = False
        for arg in args:
            if skip:
                skip = False
            elif arg.startswith("-"):
                skip = arg in _PIP_VALUE_OPTIONS
            else:
                packages.append(arg)
        found.append(packages)
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
    docker_runs = [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    docker_steps = _pip_installs(docker_runs)

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
    # PyPI's torch for Linux is the CUDA build (GBs of nvidia-* wheels): the image takes torch
    # from TORCH_INDEX_URL, PyTorch's CPU-only index unless a GPU build asks for another.
    (torch_step,) = [a for a in _pip_install_args(docker_runs) if "${TORCH_SPEC}" in a]
    assert option_values(torch_step, "--index-url") == ["${TORCH_INDEX_URL}"]
    assert docker_args["TORCH_INDEX_URL"] == CPU_TORCH_INDEX, "the CPU build of PyTorch by default"
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M), "the image runs as a non-root user"


BUILT = [
    (file, name) for file, compose in COMPOSE_FILES.items() for name in built_services(compose)
]


@pytest.mark.parametrize(("file", "name"), BUILT, ids=[f"{f}-{n}" for f, n in BUILT])
def test_compose_commands_are_the_entrypoints_arguments(file: str, name: str) -> None:
    """Docker runs a service's ``command`` after the image's ENTRYPOINT: that argv must be an
    aiworker command line the CLI parses (``aiworker aiworker worker`` is not). A health check
    runs as written, without the ENTRYPOINT."""
    spec = COMPOSE_FILES[file]["services"][name]
    argv = container_argv(COMPOSE_FILES[file], name)
    assert argv[0] == "aiworker", argv
    commands = [argv]
    test = (spec.get("healthcheck") or {}).get("test")
    if test and test[1] == "aiworker":
        assert test[0] == "CMD", "health checks use the exec form"
        commands.append(list(test[1:]))
    for command in commands:
        done = subprocess.run(
            local_command([*command, "--help"]), env=worker_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, f"{file} {name}: {shlex.join(command)}: {done.stderr}"


def reserves_gpu(spec: dict[str, Any]) -> bool:
    devices = (spec.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")
    return any("gpu" in device.get("capabilities", []) for device in devices or [])


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_compose_images_are_built_one_way(file: str) -> None:
    """Services that share an image tag build it alike (else whichever build ends last is the
    image all of them run); torch is the Dockerfile's pinned release everywhere, from PyTorch's
    CPU index except on a GPU worker; a GPU worker serves both names of its GPU."""
    compose = COMPOSE_FILES[file]
    dockerfile = (ROOT / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(.+)$", dockerfile, re.M))
    assert re.fullmatch(r"torch==[\w.]+", defaults["TORCH_SPEC"]), "a pinned torch release"
    builds: dict[str, dict[str, Any]] = {}
    for name in built_services(compose):
        spec = compose["services"][name]
        build = build_of(compose, name)
        assert build is not None
        image = spec.get("image")
        assert image, f"{name} names its image"
        first = builds.setdefault(image, build)
        assert first == build, f"{image} is built with {first} and, for {name}, with {build}"
        args = {**defaults, **build["args"]}
        assert args["TORCH_SPEC"] == defaults["TORCH_SPEC"], f"{name}: the same torch release"
        if reserves_gpu(spec):
            assert args["TORCH_INDEX_URL"] != CPU_TORCH_INDEX, f"{name}: a CUDA build of torch"
            devices = {
                parse_device(d).queue
                for d in option_values(container_argv(compose, name), "--device")
            }
            assert {"GPU", "GPU:0"} <= devices, f"{name} serves models stored for GPU and GPU:0"
        else:
            assert args["TORCH_INDEX_URL"] == CPU_TORCH_INDEX, f"{name}: the CPU build of torch"


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def test_compose_publishes_on_the_loopback_only() -> None:
    """Redis and the gateway have no password by default: their ports are published on the
    host's loopback, never on every interface (a bare ``6379:6379``)."""
    for file, compose in COMPOSE_FILES.items():
        for name, spec in compose["services"].items():
            assert spec.get("network_mode") != "host", f"{file} {name}: the host's network"
            for port in spec.get("ports", []):
                if isinstance(port, dict):
                    host_ip = port.get("host_ip", "")
                else:
                    parts = str(port).split("/")[0].rsplit(":", 2)
                    host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
                assert host_ip in LOOPBACK, f"{file} {name} publishes {port} beyond this host"


def test_redis_conf_serves_this_host_only() -> None:
    """``redis-server config/redis.conf`` on a host listens on the loopback, protected mode on;
    the compose files widen that on their command lines, for the compose network only."""
    conf: dict[str, list[str]] = {}
    for line in (ROOT / "config" / "redis.conf").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            conf[words[0].lower()] = words[1:]
    assert conf["bind"] and all(a.lstrip("-") in LOOPBACK for a in conf["bind"]), conf["bind"]
    assert conf.get("protected-mode", ["yes"]) == ["yes"]
    servers = [
        (file, name, compose_argv(spec["command"]))
        for file, compose in COMPOSE_FILES.items()
        for name, spec in compose["services"].items()
        if compose_argv(spec.get("command") or [""])[0] == "redis-server"
    ]
    assert len(servers) == 7, "docker-compose.yml's Redis and the cluster's six nodes"
    for file, name, command in servers:
        assert command[1] == "/usr/local/etc/redis/redis.conf", f"{file} {name}"
        # the other containers connect from the compose network, never from the loopback
        binds = option_values(command, "--bind")
        assert binds and binds[0] not in LOOPBACK, f"{file} {name}: {binds}"
        assert option_values(command, "--protected-mode") == ["no"], f"{file} {name}"


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
    the cluster flags; the loopback for the container's interfaces) as local redis-servers, the
    cluster created as ``cluster-init`` does, and the worker service (the image's ENTRYPOINT plus
    its command) and environment pointed at the first node: it finds the cluster, serves the CPU
    queue in partitions, passes its health check, and a job written with redis-cli -c
    completes."""
    from aiworker.embedded import LocalCluster

    services = CLUSTER_COMPOSE["services"]
    nodes = [services[f"redis-{n}"] for n in range(1, 7)]
    command = compose_argv(nodes[0]["command"])
    assert all(compose_argv(node["command"]) == command for node in nodes)
    assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "--cluster-enabled" in command
    init = " ".join(services["cluster-init"]["command"])
    assert "--cluster create" in init and "--cluster-replicas 1 --cluster-yes" in init
    spec = dict(services["worker-cpu"])
    assert spec["depends_on"] == {"cluster-init": {"condition": "service_completed_successfully"}}
    node_args = local_redis_args(command[2:])
    with LocalCluster(3, 1, ROOT / "config" / "redis.conf", node_args) as cluster:
        url = cluster.url.rsplit("/", 1)[0]
        env = {
            k: str(v).replace("redis://redis-1:6379", url) for k, v in spec["environment"].items()
        }
        env = worker_env(**env)
        worker = subprocess.Popen(
            local_command(container_argv(CLUSTER_COMPOSE, "worker-cpu")), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            check = list(spec["healthcheck"]["test"][1:])
            assert "healthy" in wait_healthy(check, env, worker)
            client = Client.from_url(cluster.url)
            client.modelstore("m", "STUB", "CPU", json.dumps({"op": "add"}).encode())
            cli = cli_program()
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
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
            if worker.stderr:
                worker.stderr.close()
        assert code == 0, "the worker did not stop cleanly"
