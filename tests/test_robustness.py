"""`iiwa-rl robustness`: suites are checked before any work; the settings are nominal
first, each term at its ends, then all at once; CSV, Markdown and PNG are written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from iiwa_rl.cli import main
from iiwa_rl.envs.randomization import Perturbation
from iiwa_rl.robustness import PerturbedPlant, load_suite, settings_of
from iiwa_rl.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
REACH_POLICY = ROOT / "assets" / "policies" / "reach"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["robustness_reach.yaml", "robustness_grasp.yaml"])
def test_shipped_suites_load(name):
    suite = load_suite(ROOT / "configs" / name)
    labels = [s.label for s in settings_of(suite)]
    assert labels[0] == "nominal" and labels[-3:] == ["all_low", "all_high", "all_corners"]


@pytest.mark.parametrize(
    "text, key, words",
    [
        (
            "task: reach\nterms:\n  link_mas: {range: [0.8, 1.2]}\n",
            "terms.link_mas",
            "unknown term",
        ),
        (
            "task: reach\nterms:\n  payload_mass: {range: [2.0, 0.0]}\n",
            "terms.payload_mass",
            "low <= high",
        ),
        ("task: reach\nterms:\n  cube_mass: {range: [0.1, 0.2]}\n", "terms.cube_mass", "grasp"),
        ("task: reach\nepisode: 5\nterms: {}\n", "episode", "unknown key"),
    ],
)
def test_bad_suites_fail_before_work_naming_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    message = str(error.value)
    assert str(path) in message and key in message and words in message


def test_settings_pin_one_term_at_each_end_then_all():
    suite = load_suite(ROOT / "configs" / "robustness_reach.yaml")
    settings = settings_of(suite)
    singles = [s for s in settings if s.term not in ("", "all")]
    assert len(singles) == 2 * len(suite.terms)
    for setting in singles:
        (spec,) = setting.section.values()
        assert spec.range[0] == spec.range[1]
    corners = settings[-1].section
    assert all(spec.distribution == "ends" for spec in corners.values())


def test_cli_writes_csv_markdown_and_heat_map(tmp_path, capsys):
    suite = write(
        tmp_path, "task: reach\nepisodes: 2\nterms:\n  command_latency: {range: [0, 2]}\n"
    )
    out = tmp_path / "out"
    code = main(["robustness", str(REACH_POLICY), "--suite", str(suite), "--output-dir", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert [r["setting"] for r in rows] == [
        "nominal",
        "command_latency=0",
        "command_latency=2",
    ]
    assert rows[0]["success_rate"] == rows[1]["success_rate"]  # latency 0 is the nominal env
    assert "| nominal |" in (out / "robustness.md").read_text()
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_names_the_suite_file_on_a_bad_suite(tmp_path, capsys):
    suite = write(tmp_path, "task: reach\nterms:\n  payload: {range: [0, 1]}\n")
    code = main(["robustness", str(REACH_POLICY), "--suite", str(suite)])
    assert code == 2
    assert f"{suite}: terms.payload: unknown term" in capsys.readouterr().err


class _Recorder:
    period_s = 0.005
    with_gripper = False  # the arm alone, as MujocoPlant for a reach

    def __init__(self):
        self.applied, self.q = [], np.zeros(7)

    def perturb(self, perturbation):
        pass

    def reset(self, q0):
        self.q = np.array(q0, dtype=float)

    def apply(self, setpoint):
        self.applied.append(np.array(setpoint))
        self.q = np.array(setpoint)

    def step(self, dt):
        return self.q.copy(), np.zeros(7)

    def joint_state(self):
        return self.q.copy(), np.zeros(7)


def test_perturbed_plant_delays_commands_and_observations_by_whole_periods():
    inner = _Recorder()
    plant = PerturbedPlant(
        inner,
        Perturbation(command_latency_periods=2, observation_latency_periods=1),
        np.random.default_rng(0),
    )
    plant.reset(np.zeros(7))
    seen = []
    for k in range(1, 7):
        plant.apply(np.full(7, float(k)))
        seen.append(plant.step(0.005)[0][0])
    # Setpoint k reaches the plant two periods late; the state read is one period old.
    assert [a[0] for a in inner.applied] == [1.0, 2.0, 3.0, 4.0]
    assert seen == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]


def test_mujoco_engine_asks_for_an_export_not_a_run_directory(tmp_path, capsys):
    pytest.importorskip("mujoco")
    suite = write(tmp_path, "task: reach\nepisodes: 1\nterms: {}\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = main(["robustness", str(run_dir), "--suite", str(suite), "--engine", "mujoco"])
    assert code == 2
    assert "iiwa-rl export RUN_DIR" in capsys.readouterr().err


def test_mujoco_engine_runs_the_controller_against_the_perturbed_plant(tmp_path, capsys):
    pytest.importorskip("mujoco")
    suite = write(
        tmp_path, "task: reach\nepisodes: 1\nterms:\n  command_latency: {range: [2, 2]}\n"
    )
    out = tmp_path / "out"
    code = main(
        ["robustness", str(REACH_POLICY), "--suite", str(suite), "--engine", "mujoco"]
        + ["--output-dir", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    with (out / "robustness.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["setting"] for row in rows] == ["nominal", "command_latency=2"]
    assert all(0.0 <= float(row["median_final_distance_mm"]) < 500.0 for row in rows)
