"""Settings: layering, coercion, errors, password hiding. Pure, no Redis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aiworker import ConfigError, Settings
from aiworker.settings import hide_password, split_list

ROOT = Path(__file__).resolve().parent.parent


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aiworker.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    s = Settings.load(env={})
    assert s == Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.prefix == "aiworker:"
    assert s.devices == ("CPU",)
    assert s.threads_per_queue == 1
    assert s.model_chunk_size == 535822336


def test_layering_each_layer_wins_over_the_ones_before(tmp_path: Path) -> None:
    config = write_toml(tmp_path, """
[aiworker]
threads_per_queue = 3
model_chunk_size = 3000
reply_ttl = 30
devices = ["CPU", "GPU:1"]
""")  # fmt: skip
    env = {"AIWORKER_MODEL_CHUNK_SIZE": "4000", "AIWORKER_REPLY_TTL": "40"}
    base = {"threads_per_queue": "2", "model_chunk_size": "2000", "reply_ttl": "20",
            "block_ms": "200", "model_cache_size": 7}  # fmt: skip
    s = Settings.load(config, env=env, base=base, reply_ttl=50, prefix=None)
    assert s.model_cache_size == 7  # base only
    assert s.block_ms == 200  # base only
    assert s.threads_per_queue == 3  # file beats base
    assert s.devices == ("CPU", "GPU:1")  # file
    assert s.model_chunk_size == 4000  # env beats file
    assert s.reply_ttl == 50  # overrides beat env
    assert s.prefix == "aiworker:"  # None overrides are ignored
    assert s.intra_op_parallelism == 0  # default


@pytest.mark.parametrize("layer", ["base", "file", "env", "override"])
def test_each_layer_alone(tmp_path: Path, layer: str) -> None:
    kwargs: dict[str, object] = {"env": {}}
    if layer == "base":
        kwargs["base"] = {"threads_per_queue": 9}
    elif layer == "file":
        kwargs["config_file"] = write_toml(tmp_path, "threads_per_queue = 9\n")
    elif layer == "env":
        kwargs["env"] = {"AIWORKER_THREADS_PER_QUEUE": "9"}
    else:
        kwargs["threads_per_queue"] = 9
    assert Settings.load(**kwargs).threads_per_queue == 9  # type: ignore[arg-type]


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'prefix = "other:"\n')
    s = Settings.load(env={"AIWORKER_CONFIG": str(config)})
    assert s.prefix == "other:"


def test_top_level_keys_and_upper_case_names(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'THREADS_PER_QUEUE = 5\nprefix = "p:"\n')
    s = Settings.load(config, env={})
    assert (s.threads_per_queue, s.prefix) == (5, "p:")


def test_env_values_are_coerced() -> None:
    env = {
        "AIWORKER_DEVICES": "CPU, GPU:0 ,,gpu:1",
        "AIWORKER_VISIBILITY_TIMEOUT": "2.5",
        "AIWORKER_PRELOAD": "TORCH",
        "AIWORKER_BLOCK_MS": "250",
        "UNRELATED": "x",
        "AIWORKER_NOT_A_SETTING": "ignored",  # only known names are read from the environment
    }
    s = Settings.load(env=env)
    assert s.devices == ("CPU", "GPU:0", "gpu:1")
    assert s.visibility_timeout == 2.5
    assert s.preload == ("TORCH",)
    assert s.block_ms == 250


@pytest.mark.parametrize(
    "value",
    ["CPU,GPU:1", "CPU GPU:1", " CPU, GPU:1 ", "CPU,\tGPU:1,", ["CPU", "GPU:1"], ["CPU,GPU:1"]],
)
def test_lists_take_commas_and_or_whitespace(value: str | list[str]) -> None:
    """One rule for every list (devices, preload; the CLI's hooks): the CLI split variables on
    whitespace and ``Settings`` on commas, so "CPU,CPU:1" reached a worker as one device."""
    assert split_list(value) == ("CPU", "GPU:1")
    assert Settings.load(env={}, devices=value).devices == ("CPU", "GPU:1")
    env = {"AIWORKER_PRELOAD": "TORCH ONNX,TF"}
    assert Settings.load(env=env).preload == ("TORCH", "ONNX", "TF")


@pytest.mark.parametrize(
    ("devices", "bad"), [("FOO", "FOO"), ("CPU,GPU:x", "GPU:x"), ("CPU:123456", "CPU:123456")]
)
def test_an_invalid_device_is_named(devices: str, bad: str) -> None:
    """A worker refused it only at start, with RedisAI's bare "Invalid DEVICE"."""
    with pytest.raises(ConfigError, match=f"invalid device '{bad}'"):
        Settings.load(env={"AIWORKER_DEVICES": devices})


def test_a_device_list_names_each_device_once_and_at_least_one() -> None:
    """ "," started a worker that served nothing, "CPU,,CPU" one with the CPU queue twice."""
    for empty in (",", " ", ""):
        with pytest.raises(ConfigError, match="no device named"):
            Settings.load(env={"AIWORKER_DEVICES": empty})
    assert Settings.load(env={"AIWORKER_DEVICES": "CPU,,cpu GPU:1 CPU"}).devices == ("CPU", "GPU:1")


def test_documented_config_file_loads() -> None:
    path = ROOT / "config" / "aiworker.toml"
    if not path.exists():
        pytest.skip("no documented config file")
    assert Settings.load(path, env={}) == Settings()


def test_replace_coerces() -> None:
    s = Settings().replace(threads_per_queue="4", devices="CPU,GPU")
    assert s.threads_per_queue == 4 and s.devices == ("CPU", "GPU")
    with pytest.raises(ConfigError):
        Settings().replace(colour="blue")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().threads_per_queue = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": {"colour": "blue"}},
        {"nonsense": 1},
    ],
)
def test_unknown_setting_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load(env={}, **kwargs)  # type: ignore[arg-type]


def test_unknown_setting_in_file_raises(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "[aiworker]\nthreads = 4\n")
    with pytest.raises(ConfigError, match="unknown setting 'threads'"):
        Settings.load(config, env={})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"AIWORKER_THREADS_PER_QUEUE": "many"}, "threads_per_queue"),
        ({"AIWORKER_VISIBILITY_TIMEOUT": "soon"}, "visibility_timeout"),
    ],
)
def test_invalid_value_raises(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=f"setting {name}: invalid value"):
        Settings.load(env=env)


@pytest.mark.parametrize("written", ["1.7", "true"])
def test_a_whole_number_setting_in_a_file_is_not_rounded(tmp_path: Path, written: str) -> None:
    """TOML's 1.7 (or true) for threads_per_queue was read as 1; 2.0 is 2."""
    config = write_toml(tmp_path, f"threads_per_queue = {written}\n")
    with pytest.raises(ConfigError, match="setting threads_per_queue: invalid value"):
        Settings.load(config, env={})
    config = write_toml(tmp_path, "threads_per_queue = 2.0\n")
    assert Settings.load(config, env={}).threads_per_queue == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threads_per_queue", 0),
        ("threads_per_queue", -3),
        ("queue_partitions", 0),
        ("queue_partitions", 1025),
        ("metrics_port", 65536),
        ("metrics_port", -1),
        ("wait_replicas", -1),
        ("max_queue_length", -1),
        ("socket_timeout", -1.0),
        ("reply_ttl", -5),
        ("visibility_timeout", 0.0),
        ("visibility_timeout", -1.0),
        ("max_tensor_bytes", -1),
        ("max_deliveries", -1),
        ("hung_job_timeout", -0.5),
        ("max_batch_waiting_bytes", -1),
    ],
)
def test_a_value_out_of_range_raises(tmp_path: Path, name: str, value: float) -> None:
    """A worker with threads_per_queue 0 registered as live and never ran a job; a metrics port
    beyond 65535 was a traceback. Every layer is held to the range: file, environment, flags."""
    config = write_toml(tmp_path, f"{name} = {value}\n")
    for kwargs in ({"config_file": config}, {"env": {f"AIWORKER_{name.upper()}": str(value)}},
                   {name: value}):  # fmt: skip
        with pytest.raises(ConfigError, match=f"setting {name}: {value} is out of range"):
            Settings.load(**{"env": {}, **kwargs})  # type: ignore[arg-type]


def test_unreadable_config_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(tmp_path / "missing.toml", env={})
    broken = write_toml(tmp_path, "threads_per_queue = = 4\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.load(broken, env={})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://user:s3cr3t@host:6379/0", "s3cr3t"),
        ("redis://:hunter2@localhost:6379", "hunter2"),
        ("rediss://default:p%40ss@example.com:6380/1", "p%40ss"),
        ("redis://host:6379/0?password=qu3ry", "qu3ry"),
        ("unix:///run/redis.sock?db=3&password=s0ck3t&socket_timeout=5", "s0ck3t"),
    ],
)
def test_repr_hides_the_password(url: str, secret: str) -> None:
    s = Settings(redis_url=url)
    text = repr(s)
    assert secret not in text
    assert ":***@" in text or "password=***" in text
    assert s.redis_url == url  # the value itself is intact
    assert secret not in hide_password(url)


def test_repr_without_password_is_unchanged() -> None:
    text = repr(Settings(redis_url="redis://host:6379/2", threads_per_queue=3))
    assert "redis_url='redis://host:6379/2'" in text
    assert "threads_per_queue=3" in text
    assert text.startswith("Settings(")
