"""What a run directory holds, and the rules for starting or resuming a run in one.

    RUN_DIR/config.yaml            the validated config the run trains (written first)
    RUN_DIR/metrics.csv, eval.csv  one row per logged update / per evaluation
    RUN_DIR/checkpoints/last.pt    written every train.checkpoint_every_steps and at the end
    RUN_DIR/checkpoints/best.pt    the best evaluation so far
    RUN_DIR/tensorboard/, learning_curve.png

A fresh run needs a new or empty directory: a directory that already holds files is
refused, never merged into, since a run killed before its first checkpoint leaves rows
no resume can account for (its metrics would interleave with the new run's). A resumed
run needs config.yaml and checkpoints/last.pt. Both checks run before any work.
"""

from __future__ import annotations

from pathlib import Path

from iiwa_rl.schema import ConfigError

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.pt"


def check_fresh(run_dir: Path) -> None:
    """Refuse a `--run-dir` a fresh run cannot write into."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: a file, not a directory")
    if checkpoint_path(run_dir, "last").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; resume it with --resume or pick another --run-dir"
        )
    contents = sorted(path.name for path in run_dir.iterdir())
    if contents:
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise ConfigError(
            f"{run_dir} is not empty ({shown}) but holds no checkpoint to resume (a run "
            "stopped before its first one?); a fresh run does not mix its logs with those: "
            "delete the directory or pick another --run-dir"
        )


def check_resumable(run_dir: Path) -> None:
    """Refuse a `--resume` directory that holds no run to continue."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "a file" if run_dir.exists() else "no such directory"
        raise ConfigError(f"--resume {run_dir}: not a run directory ({what})")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILE} to resume)")
    last = checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise ConfigError(
            f"{last}: no checkpoint to resume from (the run stopped before its first one); "
            "start it again in a new --run-dir"
        )


def read_run_config(run_dir: Path):
    """The run's own config.yaml, validated like any config (a malformed one is a
    ConfigError naming the file, not a traceback)."""
    from iiwa_rl.config import load_config

    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return load_config(config_path)
