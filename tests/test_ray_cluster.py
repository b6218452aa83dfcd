"""A two-node Ray cluster on this one machine, made as a user makes one (`ray start --head`,
then `ray start --address=...` for the second node), each node offering one `rollout`
resource so that the two rollout workers, which need one each, land on different nodes:
the environments ran on both nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'iiwa-rl[ray]'")

from iiwa_rl.ray_rollouts import _code_paths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REACH = REPO / "configs" / "reach_ppo.yaml"
RAY_CLI = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


MARK = "IIWA_RL_TEST_RAY_NODE"  # in the environment of every process our nodes start


def _our_processes(root: Path) -> list[int]:
    """Processes of the two test nodes: their environment carries MARK=root (Ray's agents
    rename themselves, so the command line alone misses some)."""
    marker = f"{MARK}={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def two_node_cluster(monkeypatch):
    # A throwaway local cluster: no token (Ray 2.60's `ray start` may require one, and the
    # driver and the second node would then need it too).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--resources", '{"rollout": 1}', "--disable-usage-stats"]
    commands = [
        [str(RAY_CLI), "start", "--head", "--port", str(port), "--include-dashboard=false"],
        [str(RAY_CLI), "start", "--address", address],
    ]
    try:
        for command, temp_dir in zip(commands, ("head", "second")):
            subprocess.run(
                [*command, *common, "--temp-dir", str(root / temp_dir)],
                check=True,
                capture_output=True,
                timeout=120,
                env={**os.environ, MARK: str(root)},
            )
        yield address
    finally:
        # `ray stop` would stop every Ray node of this machine, not only ours.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _our_processes(root):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)
        shutil.rmtree(root, ignore_errors=True)


# The driver runs in its own process, as a user's would: a Ray driver that already ran
# in this test process (test_ray.py's) does not reliably connect to a second cluster.
DRIVER = """
import json, sys
import ray
from iiwa_rl.config import load_config
from iiwa_rl.train import Trainer

config = load_config(sys.argv[1], sys.argv[3:])
trainer = Trainer(config, sys.argv[2])
cluster_nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
summary = trainer.train()
print(json.dumps({
    "step": summary["step"],
    "cluster_nodes": cluster_nodes,
    "worker_nodes": trainer.collector.worker_nodes,
    "still_connected": ray.is_initialized(),
}))
"""


def test_rollout_workers_run_on_both_nodes(tmp_path, two_node_cluster):
    total = 512  # 4 envs x 32 steps x 4 collections
    overrides = [
        "train.progress=quiet",
        "env.vector_mode=ray",
        "env.num_envs=4",
        "env.ray.workers=2",
        f"env.ray.address={two_node_cluster}",
        "env.ray.resources={rollout: 1}",
        "ppo.rollout_steps=32",
        "ppo.minibatch_size=64",
        f"train.total_steps={total}",
        f"train.eval_every_steps={total}",
        "train.eval_episodes=1",
    ]
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, str(REACH), str(tmp_path / "run"), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(_code_paths())},
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    result = json.loads(driver.stdout.strip().splitlines()[-1])
    assert result["step"] == total
    assert len(set(result["cluster_nodes"])) == 2
    # The node each worker's last collection ran on: one worker on each node.
    assert sorted(result["worker_nodes"]) == sorted(result["cluster_nodes"])
    assert not result["still_connected"]  # the run disconnected from the cluster it joined
