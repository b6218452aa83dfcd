"""Config loading: every kind of mistake is refused before any work, with a message that
names the file and the key; the CLI turns it into exit code 2 and creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from iiwa_rl.cli import main
from iiwa_rl.config import TrainConfig, config_from_dict, load_config, parse_overrides
from iiwa_rl.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]
REACH = REPO / "configs" / "reach_ppo.yaml"


def _reach_data() -> dict:
    return yaml.safe_load(REACH.read_text())


def _write(tmp_path: Path, data, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _with(path: str, value) -> dict:
    """The reach config with the dotted `path` set to `value`."""
    data = _reach_data()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


# ---------------------------------------------------------------------- good configs


def test_reach_config_loads_and_round_trips():
    config = load_config(REACH)
    raw = _reach_data()
    assert config.algorithm == "ppo" and config.env.id == "IiwaReach-v0"
    assert config.ppo.rollout_steps == raw["ppo"]["rollout_steps"]
    assert config.policy.hidden_sizes == raw["policy"]["hidden_sizes"]
    assert config.policy.log_std.max == raw["policy"]["log_std"]["max"]
    assert config.env.kwargs == raw["env"]["kwargs"]
    data = config.to_dict()
    assert "trpo" not in data and "ddpg" not in data  # only the chosen algorithm's section
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config and again.sha256() == config.sha256()


def test_overrides_merge_into_nested_sections():
    config = load_config(
        REACH,
        [
            "ppo.epochs=3",
            "env.kwargs.control_hz=50",
            "policy.log_std.mode=state_dependent",
            "train.max_wall_seconds=null",
            "policy.hidden_sizes=[32, 16]",
        ],
    )
    assert config.ppo.epochs == 3
    assert config.env.kwargs["control_hz"] == 50
    assert config.env.kwargs["episode_steps"] == _reach_data()["env"]["kwargs"]["episode_steps"]
    assert config.policy.log_std.mode == "state_dependent"
    assert config.policy.log_std.max == _reach_data()["policy"]["log_std"]["max"]
    assert config.train.max_wall_seconds is None
    assert config.policy.hidden_sizes == [32, 16]
    assert isinstance(load_config(REACH, ["ppo.learning_rate=1"]).ppo.learning_rate, float)


def test_parse_overrides_builds_nested_yaml_values():
    assert parse_overrides(["a.b.c=1", "a.b.d=[1, 2]", "a.e=x", "f=null"]) == {
        "a": {"b": {"c": 1, "d": [1, 2]}, "e": "x"},
        "f": None,
    }
    assert parse_overrides(["a=b=c"]) == {"a": "b=c"}  # split at the first '='


# ----------------------------------------------------------------------- bad configs

# (name, config data, what the message must contain besides the file name)
BAD_CONFIGS = [
    ("unknown top-level key", _with("learning_rate", 0.1), ["learning_rate: unknown key"]),
    ("unknown nested key", _with("ppo.epoch", 3), ["ppo.epoch: unknown key", "epochs"]),
    (
        "unknown deeply nested key",
        _with("policy.log_std.maximum", 1.0),
        ["policy.log_std.maximum: unknown key"],
    ),
    (
        "wrong type: string for int",
        _with("ppo.epochs", "ten"),
        ["ppo.epochs", "expected an integer", "'ten'"],
    ),
    (
        "wrong type: bool for int",
        _with("env.num_envs", True),
        ["env.num_envs", "expected an integer"],
    ),
    (
        "wrong type: string for float",
        _with("ppo.gamma", "high"),
        ["ppo.gamma", "expected a number"],
    ),
    ("wrong type: list for a section", _with("train", [1, 2]), ["train", "expected a mapping"]),
    (
        "wrong type: list item",
        _with("policy.hidden_sizes", [64, "x"]),
        ["policy.hidden_sizes[1]", "expected an integer"],
    ),
    ("not a choice", _with("device", "tpu"), ["device", "expected one of", "'tpu'"]),
    (
        "bad value (__post_init__)",
        _with("ppo.clip_range", 1.5),
        ["ppo", "clip_range must be in (0, 1)"],
    ),
    ("bad value: num_envs", _with("env.num_envs", 0), ["env", "num_envs must be >= 1"]),
    (
        "main_process_share above 1",
        _with("env.main_process_share", 1.5),
        ["env", "main_process_share must be in [0, 1], got 1.5"],
    ),
    (
        "negative handover_spin_s",
        _with("env.handover_spin_s", -0.001),
        ["env", "handover_spin_s must be in [0, 1], got -0.001"],
    ),
    (
        "bad value: log_std bounds",
        _with("policy.log_std.min", 2.0),
        ["policy.log_std", "log_std.min must be < log_std.max"],
    ),
    (
        "unknown env id",
        _with("env.id", "IiwaPour-v0"),
        ["env.id", "unknown environment 'IiwaPour-v0'", "IiwaReach-v0"],
    ),
    (
        "unknown env parameter",
        _with("env.kwargs.control_rate", 20),
        ["env.kwargs.control_rate: unknown key"],
    ),
    (
        "physics not a multiple of control rate",
        _with(
            "env.kwargs",
            {**_reach_data()["env"]["kwargs"], "physics_hz": 100.0, "control_hz": 30.0},
        ),
        ["env.kwargs", "physics_hz (100.0) must be a whole multiple of control_hz (30.0)"],
    ),
    (
        "unknown reward term",
        _with("env.kwargs.reward.terms.tcp_distanse", {"weight": -1.0}),
        ["env.kwargs.reward.terms.tcp_distanse", "unknown reward term", "tcp_distance_tanh"],
    ),
    (
        "reward term of another task",
        _with("env.kwargs.reward.terms.cube_lift", {"weight": 1.0}),
        ["env.kwargs.reward.terms.cube_lift", "cannot compute"],
    ),
    (
        "unknown reward term parameter",
        _with("env.kwargs.reward.terms.tcp_distance_tanh", {"weight": 1.0, "scale": 0.1}),
        ["env.kwargs.reward.terms.tcp_distance_tanh.scale", "unknown parameter"],
    ),
    (
        "section of another algorithm",
        _with("trpo", {"max_kl": 0.02}),
        ["'trpo'", "algorithm is 'ppo'"],
    ),
    ("top level is a list", [1, 2, 3], ["top level must be a mapping"]),
]


@pytest.mark.parametrize("name,data,expected", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_refused_with_file_and_key(tmp_path, name, data, expected):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    for part in expected:
        assert part in message, (part, message)


# Values the validator once let through (issue 20): each trained, or failed only once
# training had started. (override, what the message must contain)
OUT_OF_RANGE = [
    ("algorithm=trpo", "trpo.gamma=1.5", "trpo: gamma must be in (0, 1], got 1.5"),
    ("algorithm=ddpg", "ddpg.gamma=1.5", "ddpg: gamma must be in (0, 1], got 1.5"),
    ("algorithm=ddpg", "ddpg.gamma=-0.5", "ddpg: gamma must be in (0, 1], got -0.5"),
    (
        "algorithm=ddpg",
        "ddpg.critic_learning_rate=-1e-3",
        "ddpg: critic_learning_rate must be > 0, got -0.001",
    ),
    ("algorithm=ddpg", "ddpg.noise_decay_steps=0", "ddpg: noise_decay_steps must be >= 1, got 0"),
    ("algorithm=ddpg", "ddpg.policy_delay=0", "ddpg: policy_delay must be >= 1, got 0"),
    ("algorithm=trpo", "trpo.value_epochs=0", "trpo: value_epochs must be >= 1, got 0"),
    (None, "train.max_wall_seconds=-5", "train: max_wall_seconds must be > 0, got -5.0"),
    (None, "ppo.learning_rate=.inf", "ppo.learning_rate: expected a finite number, got inf"),
    (None, "ppo.entropy_coef=.nan", "ppo.entropy_coef: expected a finite number, got nan"),
    (None, "ppo.value_coef=.nan", "ppo.value_coef: expected a finite number, got nan"),
    (
        "algorithm=ddpg",
        "ddpg.actor_learning_rate=.nan",
        "ddpg.actor_learning_rate: expected a finite number, got nan",
    ),
    (
        "algorithm=trpo",
        "trpo.value_learning_rate=.nan",
        "trpo.value_learning_rate: expected a finite number, got nan",
    ),
    (None, "seed=-1", "seed must be in [0, 4294967296), got -1"),
    (None, f"seed={2**70}", "seed must be in [0, 4294967296)"),
    (None, "eval.seed=-3", "eval: seed must be in [0, 4294967296), got -3"),
    (None, "env.workers=0", "env: workers must be >= 1, got 0"),
    (None, "policy.hidden_sizes=[64, 0]", "policy: hidden_sizes[1] must be >= 1, got 0"),
    (None, "env.kwargs.control_hz=.nan", "env.kwargs.control_hz: expected a finite number"),
]


@pytest.mark.parametrize(
    "algorithm,override,expected", OUT_OF_RANGE, ids=[case[1] for case in OUT_OF_RANGE]
)
def test_every_number_is_checked_for_finiteness_and_range(algorithm, override, expected):
    # The reach config is PPO; another algorithm's section replaces the ppo one.
    data = _reach_data()
    if algorithm:
        del data["ppo"]
    overrides = [algorithm, override] if algorithm else [override]
    with pytest.raises(ConfigError) as error:
        load_config(_write_tmp(data), overrides)
    message = str(error.value)
    assert expected in message, message
    assert message.startswith(str(_write_tmp.last)), message


def _write_tmp(data) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _write_tmp.last = path
    return path


def _number_fields(cls, prefix=""):
    """(dotted key, annotation) of every number in a config dataclass, nested sections
    included: what the generic finiteness check must cover."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            yield from _number_fields(annotation, f"{prefix}{item.name}.")
        elif float in _base_types(annotation):
            yield f"{prefix}{item.name}", annotation


def _base_types(annotation) -> set:
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _base_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, __import__("types").UnionType):
        return set().union(*(_base_types(a) for a in typing.get_args(annotation)))
    return {annotation}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_no_float_field_accepts_nan_or_infinity(bad):
    keys = list(_number_fields(TrainConfig))
    assert len(keys) > 30  # every section's numbers, not a handful
    for key, _ in keys:
        section = key.split(".")[0]
        data: dict = {}
        if section in ("trpo", "ddpg"):
            data["algorithm"] = section
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = bad
        with pytest.raises(ConfigError, match="expected a finite number") as error:
            config_from_dict(data)
        assert key in str(error.value), (key, str(error.value))


def test_a_binary_config_file_is_refused(tmp_path):
    path = tmp_path / "policy.pt"
    path.write_bytes(b"PK\x03\x04\x00\xff\xfe binary \x80\x81")
    with pytest.raises(ConfigError, match="not a text file") as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    with pytest.raises(ConfigError, match="a directory, not a config file"):
        load_config(tmp_path)


def test_missing_file_and_invalid_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as error:
        load_config(missing)
    assert str(missing) in str(error.value)
    broken = _write(tmp_path, "ppo:\n  epochs: [1, 2\n  gamma: 0.9\n", "broken.yaml")
    with pytest.raises(ConfigError, match="not valid YAML") as error:
        load_config(broken)
    assert str(error.value).startswith(str(broken))


@pytest.mark.parametrize(
    "override,expected",
    [
        ("ppoepochs", "expected section.key=value"),
        ("ppo..epochs=3", "empty key part"),
        ("=3", "empty key part"),
        ("ppo.epochs=[1", "not valid YAML"),
    ],
)
def test_malformed_set_is_refused(override, expected):
    with pytest.raises(ConfigError, match=expected) as error:
        load_config(REACH, [override])
    assert repr(override) in str(error.value)


def test_set_value_and_section_conflict():
    with pytest.raises(ConfigError, match="set as a value and a section"):
        parse_overrides(["ppo=1", "ppo.epochs=3"])


def test_bad_set_value_names_file_and_key():
    with pytest.raises(ConfigError) as error:
        load_config(REACH, ["ppo.minibatch_size=many"])
    message = str(error.value)
    assert message.startswith(str(REACH)) and "ppo.minibatch_size" in message


def test_default_config_is_valid():
    assert config_from_dict({}) == TrainConfig()


# ------------------------------------------------------------------------------- CLI


def _cli(monkeypatch, capsys, tmp_path, argv) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)  # a default run directory would land here
    code = main(argv)
    return code, capsys.readouterr().err


CLI_CASES = [
    ("unknown nested key", _with("ppo.epoch", 3), [], ["ppo.epoch", "unknown key"]),
    ("wrong type", _with("ppo.epochs", "ten"), [], ["ppo.epochs", "expected an integer"]),
    ("unknown env id", _with("env.id", "Nope-v3"), [], ["env.id", "Nope-v3"]),
    (
        "unknown reward term",
        _with("env.kwargs.reward.terms.bogus", {"weight": 1.0}),
        [],
        ["env.kwargs.reward.terms.bogus", "unknown reward term"],
    ),
    ("physics rate", _with("env.kwargs.control_hz", 7.0), [], ["physics_hz", "control_hz"]),
    ("other algorithm", _with("ddpg", {"tau": 0.1}), [], ["ddpg"]),
    (
        "bad --set key",
        _reach_data(),
        ["--set", "train.total_step=5"],
        ["train.total_step", "unknown key"],
    ),
    (
        "malformed --set",
        _reach_data(),
        ["--set", "train.total_steps"],
        ["train.total_steps", "section.key=value"],
    ),
]


@pytest.mark.parametrize("name,data,extra,expected", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_exits_2_before_any_work(monkeypatch, capsys, tmp_path, name, data, extra, expected):
    path = _write(tmp_path, data)
    run_dir = tmp_path / "run"
    code, err = _cli(
        monkeypatch,
        capsys,
        tmp_path,
        ["train", str(path), "--run-dir", str(run_dir), "--quiet", *extra],
    )
    assert code == 2
    assert err.startswith("iiwa-rl train: error:"), err
    if "--set" not in extra or "unknown key" in expected:
        assert str(path) in err, err
    for part in expected:
        assert part in err, (part, err)
    assert not run_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no runs/ either


def test_cli_missing_config_and_bad_resume(monkeypatch, capsys, tmp_path):
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "missing.yaml", "--quiet"])
    assert code == 2 and "missing.yaml: config file not found" in err
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", "no_such_run"])
    assert code == 2 and "no_such_run" in err and "not a run directory" in err
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--quiet"])
    assert code == 2 and "CONFIG" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite_a_run(monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not touched")
    code, err = _cli(
        monkeypatch, capsys, tmp_path, ["train", str(REACH), "--run-dir", str(run_dir), "--quiet"]
    )
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"not touched"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]


def test_console_script_exit_code(tmp_path):
    """The installed `iiwa-rl` entry point really exits with status 2 (not an exception)."""
    path = _write(tmp_path, _with("normalize.clip", -1.0))
    result = subprocess.run(
        [sys.executable, "-m", "iiwa_rl.cli", "train", str(path), "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'deploy'}"},
    )
    assert result.returncode == 2, result.stderr
    assert f"{path}: normalize: clip must be > 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# configs/robustness_*.yaml are `iiwa-rl robustness` suites, not training configs
# (tests/test_robustness.py loads them).
TRAINING_CONFIGS = sorted(
    p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("robustness_")
)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds_its_trainer(path: Path, tmp_path: Path) -> None:
    """Each file in configs/ validates, and its environment and algorithm come up and act
    (on two environments in-process, to stay quick)."""
    from iiwa_rl.train import Trainer

    config = load_config(path, ["env.num_envs=2", "env.vector_mode=sync", "device=cpu"])
    trainer = Trainer(config, tmp_path / "run")
    try:
        observations, _ = trainer.envs.reset(seed=0)
        actions = trainer.algorithm.act(trainer.flatten(observations))[0]
        assert actions.shape == (2, trainer.action_size)
        trainer.envs.step(trainer.scale_action(actions))
    finally:
        trainer.envs.close()


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML alone reads `1e-3` as the string '1e-3'; a config means the number.
    path = _write(tmp_path, "ppo:\n  learning_rate: 1e-3\n")
    assert load_config(path, ["ppo.max_grad_norm=2e-1"]).ppo.learning_rate == 0.001
    assert load_config(path, ["ppo.max_grad_norm=2e-1"]).ppo.max_grad_norm == 0.2
