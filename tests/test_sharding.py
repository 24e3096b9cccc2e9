"""The client axis sharded over 8 forced CPU devices gives the single-device results."""

import json
import os
import subprocess
import sys

import pytest

from fedem_jax.algorithms import registry

HERE = os.path.dirname(os.path.abspath(__file__))


def _env():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    return env


METHODS = list(registry.methods())
GROUPS = [METHODS[i::3] for i in range(3)]  # three processes: xdist spreads them over the workers


@pytest.mark.parametrize("methods", GROUPS, ids=lambda group: group[0])
def test_eight_devices_match_one(tmp_path, methods):
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "sharding_check.py"), str(tmp_path), ",".join(methods)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with_dp = ["FedEM with DP"] if "FedEM" in methods else []
    for method in methods + with_dp:
        assert f"{method}: sharded run matches single-device run" in result.stdout, result.stdout
    for method in methods:  # issue 25: the cohort on the mesh, the federation on the host
        caps = registry.get(method).capabilities
        if caps.cohort and not caps.full_participation:
            assert f"{method}: host cohorts on 8 devices match the masked rounds" in result.stdout, (
                result.stdout
            )
    assert sorted(sum(GROUPS, [])) == sorted(registry.methods())  # every method, once


def test_cli_on_eight_devices(tmp_path):
    summaries = {}
    for devices in ("1", "8"):
        workdir = tmp_path / devices
        flags = ["--n_clients", "21", "--dim", "10", "--n_test_per_client", "50", "--n_rounds", "4"]
        flags += ["--log_freq", "2", "--quiet", "--n_devices", devices, "--workdir", str(workdir)]
        flags += ["--plots", "false", "--tensorboard", "false", "--checkpoint_every", "0"]
        result = subprocess.run(
            [sys.executable, "-m", "fedem_jax.main", *flags],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[devices] = json.loads((workdir / "summary.json").read_text())
    assert summaries["8"]["layout"]["devices"] == 8 and summaries["8"]["n_clients"] == 21
    for key in ("test_accuracy", "train_accuracy", "test_loss"):
        assert abs(summaries["8"][key] - summaries["1"][key]) < 1e-4, key
    rows = (tmp_path / "8" / "clients.csv").read_text().splitlines()
    assert len(rows) == 22  # header + the 21 real clients, no padding
