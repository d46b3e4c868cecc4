"""The command line's setup and its errors: settings layering, environment variables, `up`'s
lifecycle, and one ``(error) ...`` line with exit 1 for whatever a setup can get wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from click.testing import CliRunner
from conftest import ROOT, heartbeat_of, wait_until, worker_env

from aiworker import Client, Settings
from aiworker.cli import gateway as gateway_cli
from aiworker.cli import main
from aiworker.cli import ops as ops_cli
from aiworker.cli import serve as serve_cli
from aiworker.embedded import RedisServer, free_port
from aiworker.gateway import Gateway, GatewayConfig
from aiworker.protocol.errors import ConfigError
from aiworker.storage import health

UNREACHABLE = "redis://127.0.0.1:1/0"


def invoke(*args: str, **env: str) -> tuple[int, str]:
    """Exit code and output (stderr included) of ``aiworker ARGS``; an exception the command
    let through (a traceback for a user) fails the test."""
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def assert_clean_error(code: int, out: str, *expected: str) -> None:
    assert code == 1, out
    assert out.startswith("(error) ") and out.count("\n") == 1, out
    for text in expected:
        assert text in out


class Recorder:
    """Stands in for ``Worker`` in the CLI: records what it was started with."""

    started: list[Recorder] = []

    def __init__(self, settings: Settings, hooks: list[Any] | None = None) -> None:
        self.settings = settings
        self.hooks = hooks or []

    def run_forever(self) -> int:
        Recorder.started.append(self)
        return 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Recorder]]:
    monkeypatch.setattr(serve_cli, "Worker", Recorder)
    Recorder.started = []
    on_hangup = signal.getsignal(signal.SIGHUP)  # `up` takes SIGHUP for a stop
    yield Recorder.started
    signal.signal(signal.SIGHUP, on_hangup)


# list-valued settings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "preload"),
    [("CPU,CPU:1", "TORCH,ONNX"), ("CPU CPU:1", "TORCH ONNX"), (" CPU, CPU:1 ", "TORCH, ONNX")],
)
def test_list_variables_take_commas_and_whitespace(
    client: Client, redis_server: RedisServer, recorded: list[Recorder], devices: str, preload: str
) -> None:
    """The CLI split AIWORKER_DEVICES on whitespace, ``Settings`` on commas: "CPU,CPU:1" was one
    invalid device and crashed the worker."""
    env = {"AIWORKER_REDIS_URL": redis_server.url, "AIWORKER_DEVICES": devices}
    code, out = invoke("worker", AIWORKER_PRELOAD=preload, **env)
    assert code == 0, out
    assert recorded[0].settings.devices == ("CPU", "CPU:1")
    assert recorded[0].settings.preload == ("TORCH", "ONNX")
    code, out = invoke("worker", "--device", "CPU,GPU:1", "--device", "GPU:2", **env)
    assert recorded[1].settings.devices == ("CPU", "GPU:1", "GPU:2")


def test_hooks_variable_takes_commas_and_whitespace(
    redis_server: RedisServer, recorded: list[Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    monkeypatch.setenv("HOOKED_REDIS_URL", redis_server.url)
    code, out = invoke(
        "worker",
        AIWORKER_REDIS_URL=redis_server.url,
        AIWORKER_HOOKS="hooked:RedisLog,hooked:RedisLog hooked:RedisLog",
    )
    assert code == 0, out
    assert len(recorded[0].hooks) == 3


def test_a_hook_module_in_the_current_directory_is_found(
    redis_server: RedisServer,
    recorded: list[Recorder],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A console script's import path starts with its own directory: ``--hook mymod:Cls`` found
    mymod.py in the current directory only with PYTHONPATH=. ."""
    (tmp_path / "aiworker_cwd_hook.py").write_text(
        "class Hook:\n    def job_finished(self, event):\n        pass\n"
    )
    here = os.getcwd()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", here)])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "aiworker_cwd_hook", raising=False)
    try:
        code, out = invoke(
            "worker", "--hook", "aiworker_cwd_hook:Hook", AIWORKER_REDIS_URL=redis_server.url
        )
    finally:
        sys.modules.pop("aiworker_cwd_hook", None)
    assert code == 0, out
    assert type(recorded[0].hooks[0]).__name__ == "Hook"


# errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["status"], ["tensor", "get", "t"], ["model", "list"]])
def test_unreachable_redis_is_one_error_line(args: list[str]) -> None:
    code, out = invoke(*args, "--redis-url", UNREACHABLE)
    assert_clean_error(code, out, "Redis unreachable", "127.0.0.1:1")


def test_invalid_device_in_the_environment(redis_server: RedisServer) -> None:
    code, out = invoke("worker", AIWORKER_REDIS_URL=redis_server.url, AIWORKER_DEVICES="CPU,FOO")
    assert_clean_error(code, out, "invalid device 'FOO'")


def test_status_as_a_user_denied_scan_names_the_permission(
    client: Client, redis_server: RedisServer
) -> None:
    """A least-privilege user whose ACL denies SCAN got a NoPermissionError traceback."""
    client.acl_setuser(
        "nosscan", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-scan"]
    )
    try:
        url = f"redis://nosscan:pw@127.0.0.1:{redis_server.port}/0"
        code, out = invoke("status", "--redis-url", url)
    finally:
        client.acl_deluser("nosscan")
    assert_clean_error(code, out, "NOPERM", "'scan'")


def test_check_says_why_a_redis_that_answers_refuses(
    client: Client, redis_server: RedisServer
) -> None:
    """``check`` said "Redis unreachable" for a Redis that answered and refused the credentials
    or the user's PING, where every other command says what was refused."""
    client.acl_setuser(
        "noping", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-ping"]
    )
    try:
        code, out = invoke("check", "--redis-url", redis_server.url.replace("//", "//noping:pw@"))
        assert code == 1 and out.startswith("unhealthy: NOPERM") and "'ping'" in out, out
        code, out = invoke("check", "--redis-url", redis_server.url.replace("//", "//noping:no@"))
        assert code == 1 and out.startswith("unhealthy: Redis refused the credentials"), out
    finally:
        client.acl_deluser("noping")
    code, out = invoke("check", "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 1 and out.startswith("unhealthy: Redis unreachable"), out


def test_wrong_password_is_one_error_line(redis_server: RedisServer) -> None:
    url = f"redis://nobody:wrong@127.0.0.1:{redis_server.port}/0"
    code, out = invoke("tensor", "get", "t", "--redis-url", url)
    assert_clean_error(code, out, "credentials")


@pytest.mark.parametrize(
    "command", [["worker"], ["status"], ["gateway", "--listen", "127.0.0.1:0"]]
)
def test_redis_tls_files_need_a_rediss_url(
    redis_server: RedisServer, tmp_path: Path, command: list[str]
) -> None:
    """docs/security.md: TLS files with a plain redis:// URL are a configuration error. The
    gateway ignored them and served; worker and status refused with a traceback."""
    ca = tmp_path / "ca.crt"
    ca.write_text("not used\n")
    done = subprocess.run(
        [sys.executable, "-m", "aiworker", *command, "--redis-url", redis_server.url,
         "--tls-ca-cert", str(ca)],
        env=worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("(error) ") and "rediss://" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_gateway_refuses_redis_tls_files_with_a_plain_url() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", tls_ca_cert="/ca.crt")
    with pytest.raises(ConfigError, match="rediss://"):
        Gateway(settings, GatewayConfig())


def test_missing_redis_tls_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothere.crt")
    code, out = invoke("status", "--redis-url", "rediss://127.0.0.1:1/0", "--tls-ca-cert", missing)
    assert_clean_error(code, out, "tls_ca_cert", missing)


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_bad_listening_tls_file_of_the_gateway(
    redis_server: RedisServer, tmp_path: Path, content: str | None
) -> None:
    cert = tmp_path / "server.crt"
    if content is not None:
        cert.write_text(content)
    code, out = invoke(
        "gateway", "--redis-url", redis_server.url, "--listen", "127.0.0.1:0",
        "--tls-listen-cert", str(cert),
    )  # fmt: skip
    assert_clean_error(code, out, str(cert))


def test_gateway_port_in_use_is_one_error_line(redis_server: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = invoke(
            "gateway", "--redis-url", redis_server.url, "--listen", f"127.0.0.1:{port}"
        )
    assert_clean_error(code, out, "address already in use")


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--metrics-port", "99999"],
        ["up", "--gateway-port", "70000"],
        ["up", "--port", "70000", "--gateway-port", "0"],
    ],
)
def test_a_port_beyond_65535_is_a_usage_error(args: list[str]) -> None:
    """It was a traceback from the socket layer (OverflowError, ValueError)."""
    code, out = invoke(*args)
    assert code == 2 and "is not in the range 0<=x<=65535" in out, out


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:abc", "foo", "127.0.0.1:\u00b2"])
def test_the_gateway_refuses_a_listen_address_without_a_port(
    redis_server: RedisServer, listen: str
) -> None:
    """A port that is no number was a traceback, and one beyond 65535 was served modulo 65536
    on uvloop (127.0.0.1:99999 listened on 34463)."""
    code, out = invoke("gateway", "--redis-url", redis_server.url, "--listen", listen)
    assert_clean_error(code, out, f"--listen {listen!r}: expected host:port")


def test_a_worker_without_runs_in_flight_refuses_to_start(
    client: Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    """threads_per_queue 0 registered a live worker ("serving CPU x0") that never read a job,
    so clients waited out their reply_timeout instead of hearing that nobody serves the queue."""
    code, out = invoke("worker", "--redis-url", redis_server.url, "--threads-per-queue", "0")
    assert code == 2 and "is not in the range x>=1" in out, out
    config = tmp_path / "aiworker.toml"
    config.write_text("threads_per_queue = 0\n")
    code, out = invoke("worker", "--redis-url", redis_server.url, "--config", str(config))
    assert_clean_error(code, out, "setting threads_per_queue: 0 is out of range (1 or more)")
    assert client.zcard(client.keyspace.workers) == 0


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("THREADS_PER_QUEUE", "0", "setting threads_per_queue: 0 is out of range (1 or more)"),
        ("THREADS_PER_QUEUE", "abc", "setting threads_per_queue: invalid value 'abc'"),
        ("MAX_QUEUE_LENGTH", "-1", "setting max_queue_length: -1 is out of range (0 or more)"),
        ("QUEUE_PARTITIONS", "2000", "setting queue_partitions: 2000 is out of range"),
        ("METRICS_PORT", "70000", "setting metrics_port: 70000 is out of range"),
        ("SOCKET_TIMEOUT", "-1", "setting socket_timeout: -1.0 is out of range (0 or more)"),
        ("VISIBILITY_TIMEOUT", "0", "setting visibility_timeout: 0.0 is out of range (more than"),
    ],
)
def test_an_invalid_setting_from_the_environment_is_a_setting_error(
    redis_server: RedisServer, variable: str, value: str, said: str
) -> None:
    """An AIWORKER_* variable is a setting, invalid as the config file's is: (error), exit 1 -
    not click's usage error naming a flag the user never gave."""
    for command in ("worker", "up"):
        args = [command, "--redis-url", redis_server.url] if command == "worker" else [command]
        code, out = invoke(*args, **{f"AIWORKER_{variable}": value})
        assert_clean_error(code, out, said)


@pytest.mark.parametrize(
    ("args", "variable", "value", "said"),
    [
        (["gateway"], "AIWORKER_GATEWAY_THREADS", "0", "0 is not in the range x>=1"),
        (["gateway"], "AIWORKER_GATEWAY_REPLY_TIMEOUT", "abc", "'abc' is not a valid float"),
        (["gateway"], "AIWORKER_GATEWAY_REQUIRE_AUTH", "maybe", "'maybe' is not a valid boolean"),
        (["status"], "AIWORKER_LOG_FORMAT", "xml", "'xml' is not one of 'text', 'json'"),
        (["worker"], "AIWORKER_HOOKS", "no_such_module:X", "No module named 'no_such_module'"),
    ],
)
def test_an_invalid_option_variable_is_a_setting_error(
    redis_server: RedisServer, args: list[str], variable: str, value: str, said: str
) -> None:
    """The variables click reads for an option (the gateway's AIWORKER_GATEWAY_*, the log
    format, the hooks) were click's usage error naming a flag the user never gave, exit 2,
    where an invalid AIWORKER_* setting is one (error) line naming it, exit 1."""
    code, out = invoke(*args, "--redis-url", redis_server.url, **{variable: value})
    assert_clean_error(code, out, f"(error) {variable}: ", said)


def test_config_of_an_unknown_setting_is_an_error(
    client: Client, redis_server: RedisServer
) -> None:
    """It printed an empty line and exited 0."""
    code, out = invoke("config", "FOO", "--redis-url", redis_server.url)
    assert_clean_error(code, out, "unknown setting 'FOO'", "MODEL_CHUNK_SIZE", "THREADS_PER_QUEUE")
    code, out = invoke("config", "model_chunk_size", "--redis-url", redis_server.url)
    assert (code, out.strip()) == (0, "535822336")


# The arguments each command that takes --config needs to get as far as reading its settings.
CONFIG_COMMANDS: dict[str, list[str]] = {
    "worker": [], "up": [], "gateway": [], "check": [], "status": [],
    "tensor set": ["t", "FLOAT", "1"], "tensor get": ["t"],
    "model store": ["m", "TORCH", "CPU", "{file}"], "model get": ["m"], "model del": ["m"],
    "model list": [],
    "script store": ["s", "CPU", "{file}", "-e", "f"], "script get": ["s"], "script del": ["s"],
    "script list": [],
    "run": ["m", "-i", "a", "-o", "b"], "exec": ["AI.INFO m"], "info": [],
    "config": ["MODEL_CHUNK_SIZE"],
}  # fmt: skip


def commands_taking_config(group: click.Group = main, path: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands_taking_config(command, f"{path}{name} ")
        elif any(param.name == "config_file" for param in command.params):
            yield path + name


def test_every_command_taking_config_is_checked_below() -> None:
    assert set(commands_taking_config()) == set(CONFIG_COMMANDS)


def all_commands(group: click.Group = main, path: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{path}{name} ")
        else:
            yield path + name, command


def test_every_option_says_what_it_does() -> None:
    """``worker --threads-per-queue``, ``model store --tag/--batch/...`` and ``gateway
    --max-connections`` had no help text."""
    bare = [
        f"{name} {param.opts[0]}"
        for name, command in all_commands()
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert bare == []


def test_short_help_is_not_cut_at_an_abbreviation() -> None:
    """``aiworker tensor --help`` listed ``set`` as "Store KEY as a DTYPE tensor of SHAPE (e.g."."""
    for name, command in all_commands():
        short = command.get_short_help_str(limit=200)
        assert not short.endswith(("e.g.", "i.e.")), (name, short)


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_a_missing_config_file_is_one_error_line(command: str, tmp_path: Path) -> None:
    """README: missing or invalid files print one ``(error) ...`` line and exit 1. A missing
    --config was click's usage error, exit 2."""
    (tmp_path / "file").write_text("x\n")
    args = [arg.replace("{file}", str(tmp_path / "file")) for arg in CONFIG_COMMANDS[command]]
    missing = str(tmp_path / "nothere.toml")
    code, out = invoke(*command.split(), *args, "--config", missing)
    assert_clean_error(code, out, "config file", missing, "No such file")
    code, out = invoke(*command.split(), *args, AIWORKER_CONFIG=missing)
    assert_clean_error(code, out, "config file", missing)


def test_an_invalid_config_file_is_one_error_line(tmp_path: Path) -> None:
    broken = tmp_path / "aiworker.toml"
    broken.write_text("threads_per_queue = = 4\n")
    for config in (str(broken), str(tmp_path)):  # not TOML; a directory
        code, out = invoke("worker", "--config", config)
        assert_clean_error(code, out, f"cannot read config file {config}: ")


def test_an_unknown_preloaded_backend_is_named(redis_server: RedisServer) -> None:
    """It said "(error) unsupported backend" without naming which."""
    done = subprocess.run(
        [sys.executable, "-m", "aiworker", "worker", "--redis-url", redis_server.url,
         "--preload", "TORCH,NOPE"],
        env=worker_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("(error) preload: unsupported backend 'NOPE' (known: ")
    assert "TORCH" in done.stderr and "Traceback" not in done.stderr


def test_a_metrics_port_in_use_is_named_before_the_worker_registers(
    client: Client, redis_server: RedisServer
) -> None:
    """It said "(error) [Errno 98] Address already in use", after the worker had sent a
    heartbeat that clients then believed for 12 s."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "aiworker", "worker", "--redis-url", redis_server.url,
             "--metrics-port", str(port)],
            env=worker_env(AIWORKER_METRICS_ADDR="127.0.0.1"), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"(error) metrics port {port} on 127.0.0.1: "), done.stderr
    assert "in use" in done.stderr and done.stderr.count("\n") == 1
    assert client.zcard(client.keyspace.workers) == 0


def documented_rule(who: str, password: str) -> list[str]:
    """A user's ACL rule as docs/security.md gives it, as ACL SETUSER arguments."""
    text = (ROOT / "docs" / "security.md").read_text()
    match = re.search(rf"<!-- acl:{who} -->\s*```text\nuser \w+ (.+)\n```", text)
    assert match, f"docs/security.md shows the {who}'s ACL rule"
    return match.group(1).replace(">CHANGE-ME", f">{password}").split()


def test_status_and_check_with_the_documented_monitor_user(
    client: Client, redis_server: RedisServer
) -> None:
    """The worker's own rule lacks what ``status`` reads (SCAN, XLEN, ...): docs/security.md
    gives a read-only user for it. A denial in the per-queue reads showed zeros; now it is an
    error naming the permission. A queue no worker made a group for showed ``lag=None``."""
    keys = client.keyspace
    client.set(keys.worker("busy:1"), json.dumps(heartbeat_of(keys, "busy:1")))
    client.zadd(keys.workers, {"busy:1": time.time()})
    client.xadd(keys.queue("GPU"), {"a": "1"})  # a queue without a consumer group
    client.execute_command("ACL", "SETUSER", "monitor", "reset", *documented_rule("monitor", "pw"))
    client.execute_command("ACL", "SETUSER", "worker", "reset", *documented_rule("worker", "pw"))
    try:
        url = f"redis://monitor:pw@127.0.0.1:{redis_server.port}/0"
        code, out = invoke("status", "--redis-url", url)
        assert code == 0, out
        assert "worker busy:1: healthy" in out
        assert f"queue {keys.queue('GPU')}: length=1 pending=0 lag=- consumers=0" in out
        assert out.rstrip().endswith("(no consumer group)"), out
        code, out = invoke("check", "--redis-url", url)
        assert code == 0, out
        client.execute_command("ACL", "SETUSER", "worker", "+scan")
        code, out = invoke("status", "--redis-url", url.replace("monitor", "worker"))
        assert_clean_error(code, out, "NOPERM", "'xlen'")
    finally:
        client.execute_command("ACL", "DELUSER", "monitor", "worker")


# liveness ----------------------------------------------------------------------------------


def test_status_and_check_count_workers_alive_as_clients_do(
    client: Client, redis_server: RedisServer
) -> None:
    """Clients send jobs to a worker whose heartbeat is up to 12 s old; ``status`` and ``check``
    called it dead after 10 s."""
    keys = client.keyspace
    beat = time.time() - (health.LIVE_FOR_S - 1)
    client.set(keys.worker("busy:1"), json.dumps(heartbeat_of(keys, "busy:1", time=beat)))
    client.zadd(keys.workers, {"busy:1": beat})
    code, out = invoke("check", "--redis-url", redis_server.url)
    assert code == 0, out
    code, out = invoke("status", "--redis-url", redis_server.url)
    assert code == 0 and "worker busy:1: healthy" in out
    for command in (ops_cli.check, ops_cli.status):
        (max_age,) = [p for p in command.params if p.name == "max_age"]
        assert max_age.default == health.LIVE_FOR_S


# gateway environment variables -------------------------------------------------------------


def test_every_gateway_option_reads_its_gateway_variable() -> None:
    """AIWORKER_GATEWAY_<OPTION> for each option (dashes as underscores); --config,
    --redis-url and --prefix fall back to the worker's AIWORKER_<OPTION>, and the Redis TLS
    files read only the worker's (AIWORKER_GATEWAY_TLS_CERT once named the listening one)."""
    shared = {"config", "redis_url", "prefix"}
    redis_tls = {"tls_ca_cert", "tls_cert", "tls_key"}
    for param in gateway_cli.gateway.params:
        assert isinstance(param, click.Option)
        name = param.opts[0].lstrip("-").replace("-", "_").upper()
        expected = [f"AIWORKER_GATEWAY_{name}"]
        if name.lower() in shared:
            expected.append(f"AIWORKER_{name}")
        if name.lower() in redis_tls:
            expected = [f"AIWORKER_{name}"]
        assert param.envvar == expected, param.opts


@pytest.mark.parametrize("retired", ["TLS_CERT", "TLS_KEY", "TLS_CA_CERT"])
def test_the_gateways_retired_tls_variables_are_refused(retired: str) -> None:
    """They named the files the gateway listens with: read as Redis' TLS files instead, a
    gateway meant to listen with TLS would have listened without it."""
    code, out = invoke("gateway", **{f"AIWORKER_GATEWAY_{retired}": "server.pem"})
    listen = retired.replace("TLS_", "TLS_LISTEN_")
    assert code == 1 and f"AIWORKER_GATEWAY_{retired} (now AIWORKER_GATEWAY_{listen})" in out


def test_gateway_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setattr(gateway_cli, "_run", lambda settings, config: started.update(
        settings=settings, config=config))  # fmt: skip
    monkeypatch.setattr(gateway_cli, "_runner", lambda loop: lambda run: None)
    monkeypatch.setattr(gateway_cli.malloc, "keep_freed_memory", lambda: None)
    env = {
        "AIWORKER_REDIS_URL": "redis://worker-redis:6379/0",
        "AIWORKER_GATEWAY_REDIS_URL": "redis://gateway-redis:6379/0",
        "AIWORKER_PREFIX": "shared:",
        "AIWORKER_GATEWAY_TLS_LISTEN_CERT": "server.crt",
        "AIWORKER_GATEWAY_TLS_LISTEN_KEY": "server.key",
        "AIWORKER_GATEWAY_REPLY_TIMEOUT": "5",
    }
    code, out = invoke("gateway", **env)
    assert code == 0, out
    settings, config = started["settings"], started["config"]
    assert (settings.redis_url, settings.prefix) == ("redis://gateway-redis:6379/0", "shared:")
    assert (config.tls_cert, config.tls_key, config.reply_timeout) == (
        "server.crt", "server.key", 5.0
    )  # fmt: skip
    del env["AIWORKER_GATEWAY_REDIS_URL"]
    invoke("gateway", **env)
    assert started["settings"].redis_url == "redis://worker-redis:6379/0"


# up ------------------------------------------------------------------------------------------


def spawn_up(*args: str, **env: str) -> subprocess.Popen[str]:
    """``aiworker up`` in a process group of its own, as a shell runs it in a terminal."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiworker", "up", *args],
        env=worker_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_up_refuses_a_gateway_port_in_use() -> None:
    """The gateway thread died with a traceback while `up` ran on and advertised the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn_up("--gateway-port", str(port))
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop_group(proc)
    assert proc.returncode == 1, err
    assert err.startswith("(error) gateway port") and "address already in use" in err
    assert "Traceback" not in err and "RedisAI clients" not in out


def test_up_serves_its_settings_and_stops_on_ctrl_c() -> None:
    """`up` takes AIWORKER_* settings for its worker (it served x2 whatever they said), serves
    the gateway port it names, and a terminal's Ctrl-C (SIGINT to the whole process group)
    stops it at once: it reached the private redis-server too, and the worker's stop waited on
    a Redis that was gone."""
    gateway_port = free_port()
    proc = spawn_up("--gateway-port", str(gateway_port), AIWORKER_THREADS_PER_QUEUE="3")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        assert proc.stdout.readline().startswith(f"RedisAI clients: redis-cli -p {gateway_port} ")
        client = Client.from_url(url)
        wait_until(lambda: client.zcard(client.keyspace.workers) == 1, timeout=60)
        (name,) = client.zrange(client.keyspace.workers, 0, -1)
        status = json.loads(client.get(client.keyspace.worker(name.decode())))  # type: ignore[arg-type]
        assert status["threads_per_queue"] == 3
        assert redis.Redis(port=gateway_port).ping()
        client.close()
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        stop_group(proc)
    assert proc.returncode == 0, err
    assert took < 8, f"Ctrl-C took {took:.1f}s"
    assert "could not deregister" not in err and "stopped (0 unfinished" in err
    with pytest.raises(redis.ConnectionError):  # Redis stopped last, not left running
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_up_killed_outright_leaves_no_redis_behind() -> None:
    """`up` killed by SIGKILL (no handler runs) left its private redis-server running on its
    port, in a session of its own that no terminal would stop."""
    proc = spawn_up("--gateway-port", "0")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        server = redis.Redis.from_url(url, socket_connect_timeout=1)
        redis_pid = int(server.info("server")["process_id"])
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not pid_alive(redis_pid), timeout=10)
        with pytest.raises(redis.ConnectionError):
            server.ping()
    finally:
        stop_group(proc)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_settings_layer_below_the_flag(recorded: list[Recorder], tmp_path: Path) -> None:
    config = tmp_path / "aiworker.toml"
    config.write_text("threads_per_queue = 4\nprefix = 'mine:'\n")
    code, out = invoke("up", "--gateway-port", "0", "--config", str(config))
    assert code == 0, out
    assert (recorded[0].settings.threads_per_queue, recorded[0].settings.prefix) == (4, "mine:")
    code, out = invoke("up", "--gateway-port", "0", AIWORKER_THREADS_PER_QUEUE="3")
    assert recorded[1].settings.threads_per_queue == 3
    code, out = invoke(
        "up", "--gateway-port", "0", "--threads-per-queue", "1", AIWORKER_THREADS_PER_QUEUE="3"
    )
    assert recorded[2].settings.threads_per_queue == 1
    code, out = invoke(
        "up", "--gateway-port", "0",
        AIWORKER_REDIS_URL="rediss://elsewhere:6380/0", AIWORKER_TLS_CA_CERT="/nothing",
    )  # fmt: skip
    assert code == 0, out
    assert recorded[3].settings.threads_per_queue == 2  # up's own default
    assert recorded[3].settings.redis_url.startswith("redis://127.0.0.1:")
    assert recorded[3].settings.tls_ca_cert == ""
    # another Redis' URL, not read at all: a malformed one made `up` fail
    code, out = invoke("up", "--gateway-port", "0", AIWORKER_REDIS_URL="redis://h:notaport")
    assert code == 0, out
    assert recorded[4].settings.redis_url.startswith("redis://127.0.0.1:")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://u:secret@h:notaport", "Port could not be cast"),
        ("http://localhost:6379", "must specify one of the following schemes"),
        ("redis://[::1", "Invalid IPv6 URL"),
        ("redis://localhost:6379/abc", "the database number 'abc' is no number"),  # was DB 0
    ],
)
@pytest.mark.parametrize("command", ["status", "worker", "gateway"])
def test_a_malformed_redis_url_is_one_error_line(command: str, url: str, said: str) -> None:
    """redis-py refused it with a ValueError at the first connection: a traceback."""
    code, out = invoke(command, "--redis-url", url)
    assert_clean_error(code, out, "redis_url: ", said)
    assert "secret" not in out
