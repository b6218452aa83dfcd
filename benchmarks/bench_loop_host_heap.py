"""The control loop inside a busy host process: full garbage collections against the stale gate.

    python benchmarks/bench_loop_host_heap.py [--heap-objects 1000000] [--duration 6] \\
        [--rounds 2] [--json out.json]

A controller often shares its process with much else (a ROS 2 node, a notebook, torch, a test
session), and a full collection walks every tracked object in it while no Python thread runs.
Here the host holds `--heap-objects` small containers, and a host thread keeps making
long-lived ones (a message history, as a logging or ROS 2 node would) and asks for a full
collection every `--collect-every` seconds (as Ray's workers, test runners and notebooks
do). The shipped reach policy then runs against the in-process fake robot (a thread, as in
the tests), once as shipped (the heap standing at the start frozen while the loop runs:
`loop.collector_kept_off_the_older_heap`) and once with that freeze taken out, in turn for
`--rounds` rounds. Printed per run: full collections during it and the longest, the
longest state interval the loop saw, the faults it latched; and the ratio of the longest pauses.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))

from iiwa_deploy import loop as control_loop  # noqa: E402
from iiwa_deploy.cli import prepare_policy, run_prepared  # noqa: E402
from iiwa_deploy.fake_robot import FakeRobot, NumpyPlant  # noqa: E402
from iiwa_deploy.robot import UdpRobot  # noqa: E402

MODEL = ROOT / "assets" / "policies" / "reach" / "policy.onnx"
GOAL = (0.55, 0.15, 0.45)


class FullCollectionClock:
    """Durations of the oldest-generation collections while it is installed."""

    def __init__(self) -> None:
        self.durations_s: list[float] = []
        self._began: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.durations_s.append(time.perf_counter() - self._began)
            self._began = None


def host_thread(stop: threading.Event, history: list, collect_every_s: float) -> None:
    # A message history growing by 2,000 containers a second, and a full collection asked for
    # every `collect_every_s` (as Ray's workers, test runners and notebooks do), besides the
    # ones the growth itself triggers.
    next_collection = time.monotonic() + collect_every_s
    while not stop.is_set():
        history.extend({"stamp": time.monotonic(), "fields": [0, 1]} for _ in range(2))
        if time.monotonic() >= next_collection:
            gc.collect()
            next_collection += collect_every_s
        time.sleep(0.001)


def one_run(prepared, duration_s: float, frozen: bool, collect_every_s: float) -> dict:
    if not frozen:
        original = control_loop.collector_kept_off_the_older_heap
        control_loop.collector_kept_off_the_older_heap = contextlib.nullcontext
    robot = prepared.robot
    backend = UdpRobot(("127.0.0.1", 0), robot.robot_period_s)
    home = np.asarray(prepared.policy.contract.home_joint_positions, dtype=float)
    fake = FakeRobot(backend.local_address, NumpyPlant(robot.velocity), robot.robot_period_s, home)
    clock = FullCollectionClock()
    stop = threading.Event()
    history: list = []
    host = threading.Thread(target=host_thread, args=(stop, history, collect_every_s), daemon=True)
    fake.start(duration_s=duration_s + 10.0)
    host.start()
    gc.callbacks.append(clock)
    try:
        summary = run_prepared(prepared, backend, duration_s=duration_s)
    finally:
        gc.callbacks.remove(clock)
        stop.set()
        host.join()
        fake.close()
        backend.close()
        if not frozen:
            control_loop.collector_kept_off_the_older_heap = original
    stale = [fault for fault in summary.faults if "stale" in fault.reason]
    return {
        "frozen": frozen,
        "full_collections": len(clock.durations_s),
        "longest_collection_ms": round(max(clock.durations_s, default=0.0) * 1e3, 1),
        "longest_state_interval_ms": round(summary.state_interval.max_s * 1e3, 1),
        "stale_faults": len(stale),
        "faults": [fault.reason for fault in summary.faults],
        "history_objects": len(history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap-objects", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=6.0, help="policy seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--collect-every", type=float, default=1.0, help="s between the host's collections"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    heap = [[index] for index in range(args.heap_objects)]  # the host's standing heap
    prepared = prepare_policy(MODEL, goal=GOAL)
    rows = []
    for round_index in range(args.rounds):
        for frozen in (True, False):
            row = one_run(prepared, args.duration, frozen, args.collect_every)
            row["round"] = round_index
            rows.append(row)
            print(
                f"round {round_index} {'frozen (shipped)' if frozen else 'not frozen      '}: "
                f"{row['full_collections']} full collections, longest "
                f"{row['longest_collection_ms']} ms; longest state interval "
                f"{row['longest_state_interval_ms']} ms; faults {len(row['faults'])} "
                f"({row['stale_faults']} stale){': ' + row['faults'][0] if row['faults'] else ''}",
                flush=True,
            )
    worst = {
        frozen: max(row["longest_state_interval_ms"] for row in rows if row["frozen"] is frozen)
        for frozen in (True, False)
    }
    print(
        f"host heap {len(heap):,} objects; longest state interval not frozen / frozen: "
        f"{worst[False]} / {worst[True]} ms = {worst[False] / max(worst[True], 1e-9):.1f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"heap_objects": len(heap), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
