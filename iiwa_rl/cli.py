"""`iiwa-rl`: the command line.

iiwa-rl train CONFIG [--set key=value ...] [--run-dir DIR] [--seed N] [--quiet]
iiwa-rl train --resume RUN_DIR
iiwa-rl eval RUN_DIR [--episodes N] [--checkpoint best|last] [--json] [--video PATH]
iiwa-rl export RUN_DIR [-o policy.onnx]
iiwa-rl deploy policy.onnx --robot sim|mujoco|udp [...]
iiwa-rl robustness POLICY [POLICY ...] [--suite FILE] [--engine pybullet|mujoco] [--episodes N]
iiwa-rl view [CONFIG | RUN_DIR | policy.onnx]
iiwa-rl record [CONFIG | RUN_DIR | policy.onnx] -o rollout.mp4
iiwa-rl plot RUN_DIR [RUN_DIR ...] -o curves.png
iiwa-rl sweep CONFIG --seeds 0 1 2 [--grid key=v1,v2 ...] [--address auto|local|HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from iiwa_rl.schema import ConfigError


def _default_run_dir(config_path: str, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config_path).stem}-seed{seed}-{stamp}"


def cmd_train(args: argparse.Namespace) -> int:
    from iiwa_rl.config import load_config
    from iiwa_rl.run_dir import CONFIG_FILE, check_resumable
    from iiwa_rl.train import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        check_resumable(run_dir)
        # The run's own config, validated like any other (a damaged one is named, not a
        # traceback); --quiet is the only thing a resume may change.
        config = load_config(run_dir / CONFIG_FILE, ["train.progress=quiet"] if args.quiet else [])
        trainer = Trainer(config, run_dir, resume=True)
    else:
        if not args.config:
            raise ConfigError("train: give a CONFIG file or --resume RUN_DIR")
        overrides = list(args.set or [])
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.quiet:
            overrides.append("train.progress=quiet")
        config = load_config(args.config, overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, config.seed)
        trainer = Trainer(config, run_dir)
    print(f"run directory: {trainer.run_dir}  (device: {trainer.device})", flush=True)
    summary = trainer.train()
    draw_learning_curve(trainer.run_dir)
    print(
        f"done after {summary['step']:,} steps ({summary['stop_reason']}): "
        f"success {summary['success_rate']:.1%} over {summary['episodes']} evaluation episodes"
    )
    return 0


def draw_learning_curve(run_dir: Path) -> None:
    """RUN_DIR/learning_curve.png from the run's logs (here, not in the trainer: training
    needs no plotting library)."""
    from iiwa_rl.viz.plots import plot_runs

    try:
        plot_runs([run_dir], run_dir / "learning_curve.png")
    except ValueError as error:  # too few rows for a curve (a very short run)
        print(f"no learning curve: {error}")


def _seed(text: str) -> int:
    """argparse type of --seed: the range every seed in a config has."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    from iiwa_rl.config import EvalSection
    from iiwa_rl.evaluation import run_episodes, summarize_episodes
    from iiwa_rl.viz.policies import PolicyLoadError, load_policy, make_env, source_kind

    source = Path(args.run_dir)
    if source_kind(source) == "config":
        raise PolicyLoadError(f"{source}: a config has no trained policy; train it first")
    # A run's checkpoint or an exported policy (e.g. assets/policies/grasp), loaded as the
    # viewer and recorder load them.
    loaded = load_policy(source, checkpoint=args.checkpoint)
    env = make_env(
        loaded.env_id, loaded.env_kwargs, render_mode="rgb_array" if args.video else None
    )
    act = loaded.bind(env)
    if loaded.kind == "onnx":
        about = {"policy": str(source)}
    else:
        about = {
            "run_dir": str(source),
            "checkpoint": args.checkpoint,
            "trained_steps": loaded.trained_steps,
        }
    first_seed = loaded.evaluation_seed
    if first_seed is None:
        first_seed = EvalSection().seed

    recorder = None
    if args.video:
        from iiwa_rl.viz.record import VideoRecorder

        recorder = VideoRecorder(args.video, fps=env.unwrapped.config.control_hz)
    results = run_episodes(
        act,
        env,
        args.episodes,
        args.seed if args.seed is not None else first_seed,
        on_step=recorder.capture if recorder else None,
    )
    if recorder:
        recorder.close()
    summary = {**summarize_episodes(results), **about}
    env.close()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from iiwa_rl.viz.plots import plot_runs

    path = plot_runs(args.run_dirs, args.output, x_axis=args.x)
    print(f"wrote {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from iiwa_rl.sweep import run_sweep, summary_markdown

    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.config).stem}"
    print(f"sweep directory: {out} (run the same command again to resume)", flush=True)
    rows = run_sweep(
        args.config,
        args.seeds,
        args.grid or [],
        out,
        overrides=args.set or [],
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        threshold=args.threshold,
    )
    print(summary_markdown(rows), end="")
    print(f"wrote {out / 'summary.csv'}, {out / 'summary.md'}, {out / 'curves.png'}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iiwa-rl", description="RL for the KUKA LBR iiwa 14")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a policy from a YAML config")
    train.add_argument("config", nargs="?", help="configs/*.yaml")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. ppo.epochs=5"
    )
    train.add_argument(
        "--run-dir", help="where to write the run (default runs/<config>-seed<N>-<time>)"
    )
    train.add_argument("--seed", type=_seed)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--quiet", action="store_true", help="no live progress bar")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's or an exported policy deterministically"
    )
    evaluate.add_argument("run_dir", help="a run directory, a policy.onnx or a folder holding one")
    evaluate.add_argument("--episodes", type=_positive, default=100)
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.add_argument(
        "--seed", type=_seed, help="first episode's seed (default: config eval.seed)"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--video", metavar="PATH", help="record the episodes (.mp4 or .gif)")
    evaluate.set_defaults(handler=cmd_eval)

    plot = commands.add_parser("plot", help="learning curves of one or several runs")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.add_argument(
        "--x",
        choices=["step", "wall_time", "both"],
        default="step",
        help="x axis; both: every row against steps and again against wall-clock",
    )
    plot.set_defaults(handler=cmd_plot)

    sweep = commands.add_parser("sweep", help="seeds x settings of a config on Ray Tune")
    sweep.add_argument("config", help="configs/*.yaml")
    sweep.add_argument("--seeds", type=_seed, nargs="+", required=True)
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a setting to sweep, e.g. ppo.learning_rate=1e-3,3e-4 (repeat for a product)",
    )
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="for every trial")
    sweep.add_argument("--address", help="Ray cluster: auto, local (default) or HOST:PORT")
    sweep.add_argument("--out", help="sweep directory (default runs/sweep-<config>)")
    sweep.add_argument("--cpus-per-trial", type=float, default=1.0)
    sweep.add_argument(
        "--threshold", type=float, default=0.9, help="success rate for 'time to threshold'"
    )
    sweep.set_defaults(handler=cmd_sweep)

    # Commands whose code lives with what they drive.
    from iiwa_rl import deploy_sim, export, robustness
    from iiwa_rl.viz import record, viewer

    for module in (export, deploy_sim, viewer, record, robustness):
        module.register_cli(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, FileExistsError) as error:
        print(f"iiwa-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        # Only raised once the simulation module is loaded, so importing it here is free.
        from iiwa_rl.sim.client import DisplayUnavailableError

        if not isinstance(error, DisplayUnavailableError):
            raise
        print(f"iiwa-rl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iiwa-rl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
