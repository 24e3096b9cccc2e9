"""Behaviour is pinned: every method's ``metrics.jsonl`` on a short synthetic run equals the rows
recorded in ``golden/method_metrics.json`` (timing fields aside), to float32 rounding.

The rows were recorded on the code before the algorithm interface was reshaped (issue 10), so a
refactor that changes any method's numbers fails here. The round-0 row (the model before
training, added later) is not in the recording: it is checked apart, and every later row must
still equal its recorded value. To record them again after a *deliberate*
change of behaviour:

    python tests/test_method_invariants.py --record
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden", "method_metrics.json")
SMALL = ["--n_clients", "12", "--dim", "8", "--n_test_per_client", "40", "--n_rounds", "4", "--log_freq", "2"]
SMALL += ["--quiet", "--checkpoint_every", "0", "--tensorboard", "false", "--seed", "7", "--plots", "false"]
CASES = {
    "FedEM": [],
    "FedEM-sampled": ["--method", "FedEM", "--sampling_rate", "0.5"],
    "FedEM-unseen": ["--method", "FedEM", "--test_clients_frac", "0.25"],
    "FedEM-mlp-chunks": ["--method", "FedEM", "--model", "mlp", "--client_chunk", "4", "--learner_vmap", "0"],
    "FedAvg": ["--method", "FedAvg"],
    "FedProx": ["--method", "FedProx", "--mu", "0.1"],
    "FedAvg+": ["--method", "FedAvg+"],
    "local": ["--method", "local"],
    "pFedMe": ["--method", "pFedMe", "--mu", "0.5"],
    "pFedMe-true": ["--method", "pFedMe-true"],
    "clustered": ["--method", "clustered", "--tol_1", "10", "--tol_2", "0.01"],
    "APFL": ["--method", "APFL"],
    "AFL": ["--method", "AFL", "--lr_lambda", "0.5"],
    "q-FFL": ["--method", "q-FFL", "--q", "2"],
    "L2SGD": ["--method", "L2SGD"],
    "D-FedEM": ["--method", "D-FedEM"],
}


def metrics_rows(workdir: str, flags: list[str]) -> list[dict]:
    """``metrics.jsonl`` of one CLI run, timing fields dropped."""
    from fedem_jax.main import main

    assert main([*SMALL, *flags, "--workdir", workdir]) == 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def _close(got, want) -> bool:
    if isinstance(want, float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=2e-5, abs_tol=2e-6)
    return got == want


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_unchanged(tmp_path, case):
    with open(GOLDEN) as f:
        want = json.load(f)[case]
    round_zero, *got = metrics_rows(str(tmp_path / "run"), CASES[case])
    assert round_zero["round"] == 0 and set(round_zero) <= set(got[0])
    assert round_zero["train_loss"] > got[-1]["train_loss"]  # the model trained after round 0
    assert [sorted(r) for r in got] == [sorted(r) for r in want], "metric names changed"
    for got_row, want_row in zip(got, want, strict=True):
        bad = {k: (got_row[k], v) for k, v in want_row.items() if not _close(got_row[k], v)}
        assert not bad, f"round {want_row['round']}: {bad}"


def record() -> None:
    import tempfile

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, flags in CASES.items():
            rows[case] = metrics_rows(os.path.join(tmp, case), flags)[1:]  # round 0 is checked apart
            print(case, rows[case][-1], flush=True)
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
        json.dump(rows, f, indent=1, sort_keys=True)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_method_invariants.py --record")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    record()
