"""Checkpoint files: safe loading, format version and content digest, and a clear message
naming the file for every kind of bad checkpoint, in `train --resume`, `eval` and
`export` alike; format-1 checkpoints (before the digest) still load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iiwa_rl.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    build_policy,
    content_sha256,
    load_checkpoint,
    load_run,
    remove_stale_partials,
    save_checkpoint,
)
from iiwa_rl.cli import main
from iiwa_rl.config import config_from_dict
from iiwa_rl.train import Trainer


def _pendulum(hidden: list[int]) -> dict:
    return {
        "env": {"id": "Pendulum-v1", "num_envs": 2},
        "policy": {"hidden_sizes": hidden},
        "critic": {"hidden_sizes": hidden},
        "ppo": {"rollout_steps": 64, "minibatch_size": 64, "epochs": 1},
        "train": {
            "total_steps": 512,
            "eval_every_steps": 256,
            "eval_episodes": 1,
            "checkpoint_every_steps": 256,
            "progress": "quiet",
        },
    }


def _train(run_dir: Path, hidden: list[int]) -> Path:
    Trainer(config_from_dict(_pendulum(hidden)), run_dir).train()
    return run_dir


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two finished Pendulum runs (a second or two each) with different network sizes."""
    root = tmp_path_factory.mktemp("runs")
    return _train(root / "small", [16]), _train(root / "large", [24, 24])


@pytest.fixture
def run(finished_runs, tmp_path) -> Path:
    """A copy of the small run this test may damage."""
    return Path(shutil.copytree(finished_runs[0], tmp_path / "run"))


def _flip_inside_a_tensor(path: Path, tensor: torch.Tensor, count: int = 64) -> None:
    """Invert `count` bytes of `tensor`'s data where it lies in the file: what a bad disk
    or a bad copy does, and what torch itself does not notice."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().numpy().tobytes()
    start = bytes(data).find(raw)
    assert start >= 0 and len(raw) >= count
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_actor_weight(state: dict) -> torch.Tensor:
    return max(state["algorithm"]["actor"].values(), key=lambda tensor: tensor.numel())


# --------------------------------------------------------------- the file format
def test_a_checkpoint_round_trips_verified_and_loads_with_plain_weights_only(run):
    last = run / "checkpoints" / "last.pt"
    record = torch.load(last, weights_only=True)  # no allowlist needed: tensors and plain data
    assert record["format"] == FORMAT and record["version"] == VERSION
    assert record["sha256"] == content_sha256(record["state"])
    state = load_checkpoint(last)
    assert state["global_step"] == 512 and state["source"] == str(last)
    assert isinstance(state["obs_normalizer"]["mean"], torch.Tensor)  # was numpy when saved


def test_content_digest_sees_every_value():
    state = {"a": torch.arange(4.0), "b": [1, 2.0, "x"], "c": {"d": None, "e": True}}
    digest = content_sha256(state)
    assert digest == content_sha256({k: v for k, v in state.items()})
    changed = [
        {**state, "a": torch.tensor([0.0, 1.0, 2.0, 3.5])},
        {**state, "a": torch.arange(4.0).double()},  # same values, another dtype
        {**state, "a": torch.arange(4.0).reshape(2, 2)},  # same bytes, another shape
        {**state, "b": [1, 2, "x"]},  # 2.0 and 2 differ
        {**state, "c": {"d": None, "e": 1}},
    ]
    for other in changed:
        assert content_sha256(other) != digest, other


def test_save_is_atomic_and_cleans_up_after_an_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"x": np.arange(3.0)})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"x": object()})  # not storable: refused before writing
    assert torch.load(path, weights_only=True)["state"]["x"].tolist() == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_partial_files_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = tmp_path / f"last.pt.partial.{finished.pid}"
    stale.write_bytes(b"half a checkpoint")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"best.pt.partial.{sleeper.pid}"
        live.write_bytes(b"being written")
        assert remove_stale_partials(tmp_path) == [stale]
        assert not stale.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------ bad checkpoints
def _truncated(path: Path, _) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path, _) -> None:
    path.write_bytes(b"")


def _random(path: Path, _) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _not_a_checkpoint(path: Path, _) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _a_bare_tensor(path: Path, _) -> None:
    torch.save(torch.zeros(3), path)


def _unknown_version(path: Path, _) -> None:
    record = torch.load(path, weights_only=True)
    torch.save({**record, "version": 99}, path)


def _state_without_a_key(path: Path, _) -> None:
    state = load_checkpoint(path)
    del state["source"], state["algorithm"]
    save_checkpoint(path, state)


def _bit_flips(path: Path, _) -> None:
    _flip_inside_a_tensor(path, _largest_actor_weight(load_checkpoint(path)))


def _other_network_sizes(path: Path, finished_runs) -> None:
    shutil.copy(finished_runs[1] / "checkpoints" / "last.pt", path)


def _runs_code(path: Path, _) -> None:
    marker = path.parent / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"version": 1, "payload": RunsCode()}, path)


BAD_CHECKPOINTS = [
    ("truncated", _truncated, "not a readable checkpoint"),
    ("empty", _empty, "is empty (0 bytes)"),
    ("random bytes", _random, "not a readable checkpoint"),
    ("another torch file", _not_a_checkpoint, "not an iiwa-rl checkpoint"),
    ("a bare tensor", _a_bare_tensor, "not an iiwa-rl checkpoint (it holds a Tensor)"),
    ("unknown version", _unknown_version, "format version 99"),
    ("missing key", _state_without_a_key, "'algorithm' is missing"),
    ("64 flipped bytes in a tensor", _bit_flips, "corrupted: the content's SHA-256"),
    ("other network sizes", _other_network_sizes, "does not fit the run's config"),
    ("a pickle that runs code", _runs_code, "refused"),
]


@pytest.mark.parametrize(
    "damage,expected", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS]
)
def test_bad_checkpoint_is_named_in_resume_eval_and_export(
    run, finished_runs, capsys, monkeypatch, damage, expected
):
    monkeypatch.chdir(run.parent)
    last = run / "checkpoints" / "last.pt"
    damage(last, finished_runs)
    (run / "checkpoints" / "best.pt").unlink()  # eval and export then read last.pt
    damaged = last.read_bytes()
    metrics_before = (run / "metrics.csv").read_text()
    for argv in (
        ["train", "--resume", str(run), "--quiet"],
        ["eval", str(run), "--episodes", "1"],
        ["export", str(run), "-o", str(run.parent / "policy.onnx")],
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert f"error: {last}: " in err, (argv, err)
        assert expected in err, (argv, err)
        assert "Traceback" not in err
    assert last.read_bytes() == damaged  # nothing was written over it
    assert (run / "metrics.csv").read_text() == metrics_before
    assert not (run.parent / "policy.onnx").exists()
    assert not (run / "checkpoints" / "code-ran").exists()


def test_flipped_bytes_load_silently_without_the_digest(run):
    """What the digest is for: torch itself loads the damaged tensor without a word."""
    last = run / "checkpoints" / "last.pt"
    weights = load_checkpoint(last)["algorithm"]["actor"]
    name = max(weights, key=lambda key: weights[key].numel())
    _flip_inside_a_tensor(last, weights[name])
    record = torch.load(last, weights_only=True)
    assert not torch.equal(record["state"]["algorithm"]["actor"][name], weights[name])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(last)


# ------------------------------------------------------------- format version 1
def _as_format_1(path: Path) -> None:
    """Rewrite a checkpoint as the trainer wrote them before format 2: the bare state
    with a version key, numpy arrays where the normalisers keep numpy."""
    state = load_checkpoint(path)
    del state["source"]
    for key in ("obs_normalizer", "reward_scaler"):
        for name in ("mean", "var"):
            state[key][name] = state[key][name].numpy()
    torch.save({"version": 1, **state}, path)


def test_format_1_checkpoints_still_load_resume_and_evaluate(run, capsys, monkeypatch):
    last = run / "checkpoints" / "last.pt"
    config, current = load_run(run, "last")
    expected_actor, expected_normalizer = build_policy(config, current)
    _as_format_1(last)
    assert torch.load(last, weights_only=False)["version"] == 1
    config, legacy = load_run(run, "last")
    actor, normalizer = build_policy(config, legacy)
    raw = np.random.default_rng(0).normal(size=(8, 3))
    np.testing.assert_array_equal(normalizer(raw), expected_normalizer(raw))
    with torch.no_grad():
        observations = torch.from_numpy(normalizer(raw))
        assert torch.equal(
            actor.deterministic(observations), expected_actor.deterministic(observations)
        )
    monkeypatch.chdir(run.parent)
    assert main(["eval", str(run), "--checkpoint", "last", "--episodes", "1", "--json"]) == 0
    capsys.readouterr()
