"""Run directories: a fresh run never mixes into an old one's files, a finished run
resumes to nothing new, stale partial checkpoints go, and every refusal is a message
with exit status 2 that leaves the directory as it was."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iiwa_rl.cli import main
from iiwa_rl.config import config_from_dict
from iiwa_rl.train import Trainer

PENDULUM = {
    "env": {"id": "Pendulum-v1", "num_envs": 2},
    "policy": {"hidden_sizes": [16]},
    "critic": {"hidden_sizes": [16]},
    "ppo": {"rollout_steps": 64, "minibatch_size": 64, "epochs": 1},
    "train": {
        "total_steps": 512,
        "eval_every_steps": 256,
        "eval_episodes": 1,
        "checkpoint_every_steps": 256,
        "progress": "quiet",
    },
}


def _steps(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return [int(float(row["step"])) for row in csv.DictReader(handle)]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    Trainer(config_from_dict(PENDULUM), run_dir).train()
    return run_dir


@pytest.fixture
def config_file(tmp_path) -> Path:
    import yaml

    path = tmp_path / "pendulum.yaml"
    path.write_text(yaml.safe_dump(PENDULUM))
    return path


def _cli(monkeypatch, capsys, cwd: Path, argv: list[str]) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr("iiwa_rl.cli.draw_learning_curve", lambda run_dir: None)
    code = main(argv)
    return code, capsys.readouterr().err


def test_fresh_train_refuses_the_directory_of_a_run_killed_before_its_first_checkpoint(
    monkeypatch, capsys, tmp_path, config_file
):
    """The dead run's rows (steps 64, 128, 192) would stay above the new run's (64, 128,
    ...): the directory is refused, untouched, and the message says what to do."""
    dead = tmp_path / "run"
    dead.mkdir()
    (dead / "config.yaml").write_text(config_file.read_text())
    (dead / "metrics.csv").write_text("step,episode_return\n64,-1\n128,-1\n192,-1\n")
    before = _snapshot(dead)
    code, err = _cli(
        monkeypatch, capsys, tmp_path, ["train", str(config_file), "--run-dir", str(dead)]
    )
    assert code == 2, err
    assert f"{dead} is not empty" in err and "metrics.csv" in err
    assert "delete the directory or pick another --run-dir" in err
    assert _snapshot(dead) == before
    # ... and it cannot be resumed either: it has no checkpoint, and says so.
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(dead)])
    assert code == 2 and "no checkpoint to resume from" in err, err
    assert _snapshot(dead) == before


def test_fresh_train_into_an_empty_directory_is_fine(monkeypatch, capsys, tmp_path, config_file):
    empty = tmp_path / "run"
    empty.mkdir()
    code, err = _cli(
        monkeypatch, capsys, tmp_path, ["train", str(config_file), "--run-dir", str(empty)]
    )
    assert code == 0, err
    assert _steps(empty / "metrics.csv") == list(range(128, 513, 128))


def test_run_dir_naming_a_file_is_refused(monkeypatch, capsys, tmp_path, config_file):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, err = _cli(
        monkeypatch, capsys, tmp_path, ["train", str(config_file), "--run-dir", str(target)]
    )
    assert code == 2 and f"--run-dir {target}: a file, not a directory" in err, err
    assert target.read_text() == "mine"
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(target)])
    assert code == 2 and "not a run directory (a file)" in err, err


def test_resuming_a_finished_run_adds_no_evaluation_row(
    monkeypatch, capsys, tmp_path, finished_run
):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    evals, metrics = _steps(run / "eval.csv"), _steps(run / "metrics.csv")
    assert evals == [256, 512]
    last = (run / "checkpoints" / "last.pt").read_bytes()
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(run), "--quiet"])
    assert code == 0, err
    assert _steps(run / "eval.csv") == evals  # not [256, 512, 512]
    assert _steps(run / "metrics.csv") == metrics
    assert (run / "checkpoints" / "last.pt").read_bytes() == last  # nothing to save


def test_resume_removes_partial_checkpoints_of_dead_writers(
    monkeypatch, capsys, tmp_path, finished_run
):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = run / "checkpoints" / f"last.pt.partial.{gone.pid}"
    stale.write_bytes(b"the first half of a checkpoint")
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(run), "--quiet"])
    assert code == 0, err
    assert not stale.exists()


def test_malformed_config_of_a_resumed_run_is_named(monkeypatch, capsys, tmp_path, finished_run):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    for text, expected in (
        ("algorithm: ppo\nppo: [1, 2\n", "not valid YAML"),
        ("algorithm: ppo\nppo:\n  epochs: many\n", "ppo.epochs: expected an integer"),
    ):
        (run / "config.yaml").write_text(text)
        code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(run)])
        assert code == 2, err
        assert f"{run / 'config.yaml'}: " in err and expected in err, err
        assert "Traceback" not in err
    (run / "config.yaml").write_bytes(b"\x80\x81\xfe binary")
    code, err = _cli(monkeypatch, capsys, tmp_path, ["train", "--resume", str(run)])
    assert code == 2 and "not a text file" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_message(monkeypatch, capsys, tmp_path, config_file):
    run_dir = tmp_path / "run"
    code, err = _cli(
        monkeypatch,
        capsys,
        tmp_path,
        ["train", str(config_file), "--run-dir", str(run_dir), "--set", "device=cuda"],
    )
    assert code == 2, err
    assert "device: cuda was asked for" in err and "device: cpu" in err
    assert "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--seed", "-3"], "argument --seed: must be in [0, 2**32), got -3"),
        (["--seed", str(2**70)], "argument --seed: must be in [0, 2**32)"),
        (["--seed", "x"], "argument --seed: expected an integer, got 'x'"),
        (["--set", "seed=-1"], "seed must be in [0, 4294967296), got -1"),
        (["--set", f"seed={2**70}"], "seed must be in [0, 4294967296)"),
    ],
    ids=["--seed -3", "--seed 2**70", "--seed x", "seed: -1", "seed: 2**70"],
)
def test_bad_seeds_exit_2_and_leave_no_run_directory(tmp_path, config_file, argv, expected):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "iiwa_rl.cli", "train", str(config_file)]
        + ["--run-dir", str(run_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **__import__("os").environ,
            # The checkout's own controller package too, not an installed one.
            "PYTHONPATH": __import__("os").pathsep.join(
                [str(Path(__file__).parents[1]), str(Path(__file__).parents[1] / "deploy")]
            ),
        },
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pendulum.yaml"]


def test_env_workers_reach_the_batched_vector_env(tmp_path, monkeypatch):
    # Without env.workers the batched env takes one worker per core: 4 here, so a
    # workers value that got lost shows as subprocesses.
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    data = {
        **PENDULUM,
        "env": {"id": "Pendulum-v1", "num_envs": 4, "vector_mode": "batched", "workers": 1},
    }
    trainer = Trainer(config_from_dict(data), tmp_path / "run")
    try:
        # One worker: the main process steps every env itself, no subprocess.
        assert trainer.envs._processes == []
        assert trainer.envs._local_slice == slice(0, 4)
    finally:
        trainer.envs.close()
