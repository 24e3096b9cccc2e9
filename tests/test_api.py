"""The library: ``fedem_jax.config``, a ``Session`` driven by hand giving exactly the rows ``run``
writes, callbacks, methods registered from outside the package (``register``, ``--plugin``, entry
points), the README's Python example and the three examples, and a house without import circles."""

import ast
import json
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

import fedem_jax
from fedem_jax.main import main
from fedem_jax.reporting.outputs import TIMING_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_clients=8, n_test_per_client=30, n_rounds=4, log_freq=2, lr_scheduler="constant")


def _untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def _written_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return _untimed(json.loads(line) for line in f)


def test_config_applies_presets_validates_and_writes_nothing(tmp_path):
    cfg = fedem_jax.config("cifar10", workdir=str(tmp_path / "never"))
    assert (cfg.training.lr, cfg.model.name, cfg.data.n_clients) == (0.03, "cifar10_cnn", 80)
    assert fedem_jax.config("synthetic", lr=0.5).training.lr == 0.5
    assert fedem_jax.config("synthetic", method="FedAvg").model.n_learners == 1  # single-model method
    assert fedem_jax.config("synthetic", seeds=[1, 2]).runs() == [{"seed": 1}, {"seed": 2}]
    assert not (tmp_path / "never").exists()
    with pytest.raises(fedem_jax.ConfigError, match="--lr must be > 0"):
        fedem_jax.config("synthetic", lr=-1)


@pytest.mark.parametrize("sweep", [False, True])
def test_a_session_by_hand_gives_exactly_the_rows_run_writes(tmp_path, sweep):
    settings = dict(SMALL, seeds=[1, 2]) if sweep else SMALL
    cfg = fedem_jax.config("synthetic", workdir=str(tmp_path / "run"), quiet=True, plots=False, **settings)
    summary = fedem_jax.run(cfg, log=None)
    session = fedem_jax.Session(cfg)
    rows = list(session.rounds())
    assert _untimed(rows) == _written_rows(cfg.output.workdir)
    timing = {"seconds_per_round", "compile_seconds", "data_seconds", "total_seconds", "eval_seconds"}
    by_hand = session.summary()
    assert {k: v for k, v in by_hand.items() if k not in timing | {"layout", "runs"}} == {
        k: v for k, v in summary.items() if k not in timing | {"layout", "runs"}
    }
    assert session.pi.shape == ((2, 8, 3) if sweep else (8, 3))
    np.testing.assert_allclose(session.pi.sum(axis=-1), 1.0, rtol=1e-5)


def test_step_evaluate_and_state_by_hand(tmp_path):
    session = fedem_jax.Session(fedem_jax.config("synthetic", **SMALL))
    assert not session.built and session.round == 0  # nothing loaded or compiled yet
    metrics = session.step()
    assert metrics["round"] == 1 and session.round == 1 and metrics["seconds"] > 0
    assert np.isfinite(metrics["train_nll_start"])
    row = session.evaluate()
    assert row["round"] == 1 and 0 <= row["test_accuracy"] <= 1 and session.history == [row]
    assert int(session.state.round) == 1


class Recorder(fedem_jax.Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, session):
        self.calls.append(("on_start", session.built))

    def on_build(self, session):
        self.calls.append(("on_build", session.round))

    def after_evaluation(self, session, rows):
        self.calls.append(("after_evaluation", [row["round"] for row in rows]))

    def after_round(self, session, metrics):
        self.calls.append(("after_round", metrics["round"]))

    def on_end(self, session, summary):
        self.calls.append(("on_end", summary["n_rounds"]))

    def close(self, session, error):
        self.calls.append(("close", type(error).__name__ if error else None))


def test_callbacks_see_every_hook_in_order_and_nothing_is_written(tmp_path):
    recorder = Recorder()
    cfg = fedem_jax.config("synthetic", workdir=str(tmp_path / "nothing"), **SMALL)
    fedem_jax.run(cfg, callbacks=[recorder], log=None)
    assert recorder.calls == [
        ("on_start", False), ("on_build", 0), ("after_evaluation", [0]),
        ("after_round", 1), ("after_evaluation", [2]), ("after_round", 2), ("after_round", 3),
        ("after_evaluation", [4]), ("after_round", 4), ("on_end", 4), ("close", None),
    ]  # fmt: skip
    assert not (tmp_path / "nothing").exists()


def test_close_is_told_what_ended_the_run(tmp_path):
    class Failing(fedem_jax.Callback):
        def after_round(self, session, metrics):
            raise fedem_jax.OutputError("disk full")

    recorder = Recorder()
    cfg = fedem_jax.config("synthetic", **SMALL)
    with pytest.raises(fedem_jax.OutputError):
        fedem_jax.run(cfg, callbacks=[recorder, Failing()], log=None)
    assert recorder.calls[-1] == ("close", "OutputError")


class EndAfterRound(fedem_jax.Callback):
    """Early stopping: ends the run after round ``last``."""

    def __init__(self, last):
        self.last = last

    def after_round(self, session, metrics):
        if metrics["round"] == self.last:
            session.end_early()


def ended_early_and_straight(tmp_path, settings: dict, last: int):
    """A synthetic run ended after round ``last`` and started again (it resumes), and the same run
    straight: their written rows (timings dropped) and their two summaries."""
    cfg = fedem_jax.config("synthetic", workdir=str(tmp_path / "early"), **settings)
    fedem_jax.run(cfg, callbacks=fedem_jax.default_callbacks(cfg) + [EndAfterRound(last)], log=None)
    resumed = fedem_jax.run(cfg, log=None)
    straight = fedem_jax.run(cfg.replace(workdir=str(tmp_path / "straight")), log=None)
    return _written_rows(tmp_path / "early"), _written_rows(tmp_path / "straight"), resumed, straight


def test_a_callback_ends_the_run_early_and_the_same_run_resumes_exactly(tmp_path):
    """Ended after round 3 (between evaluations): round 3 is evaluated, summarised and
    checkpointed; run again, it resumes there and ends exactly as a run that never stopped."""
    settings = dict(SMALL, n_rounds=6, log_freq=2, checkpoint_every=10, plots=False, quiet=True)
    cfg = fedem_jax.config("synthetic", workdir=str(tmp_path / "early"), **settings)
    callbacks = fedem_jax.default_callbacks(cfg) + [EndAfterRound(3)]
    summary = fedem_jax.run(cfg, callbacks=callbacks, log=None)
    assert summary["rounds_done"] == 3 and summary["n_rounds"] == 6
    assert [row["round"] for row in _written_rows(cfg.output.workdir)] == [0, 2, 3]
    assert os.listdir(tmp_path / "early" / "checkpoints") == ["3"]
    resumed = fedem_jax.run(cfg, log=None)
    straight = fedem_jax.run(cfg.replace(workdir=str(tmp_path / "straight")), log=None)
    assert "rounds_done" not in resumed
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (
        straight["test_accuracy"],
        straight["test_loss"],
    )
    last = _written_rows(cfg.output.workdir)[-1]
    assert last == _written_rows(tmp_path / "straight")[-1] and last["round"] == 6
    session = fedem_jax.Session(cfg.replace(workdir=str(tmp_path / "by_hand")))
    rows = []
    for row in session.rounds():
        rows.append(row["round"])
        session.end_early()  # by hand: after the first evaluation
    assert rows == [0] and session.round == 0 and session.summary()["rounds_done"] == 0


def test_every_error_has_its_exit_code():
    import signal

    from fedem_jax import errors

    codes = {errors.ConfigError: 2, errors.DataError: 1, errors.OutputError: 1, errors.DivergenceError: 3,
             errors.PlotError: 1}  # fmt: skip
    for cls, code in codes.items():
        assert issubclass(cls, errors.FedemError) and cls("x").exit_code == code
    assert errors.Interrupted(signal.SIGTERM, 3).exit_code == 143
    err = errors.DivergenceError("the loss became non-finite")
    err.hints.append("the last good checkpoint is kept")
    assert err.message() == "error: the loss became non-finite; the last good checkpoint is kept"


@pytest.fixture
def own_method():
    """The example's HalfAvg, registered (and removed again after the test)."""
    module = runpy.run_path(os.path.join(ROOT, "examples", "own_method.py"))
    yield module["HALF_AVG"]
    fedem_jax.unregister("HalfAvg")


def test_a_method_from_outside_the_package_trains_everywhere(tmp_path, own_method, capsys):
    """Through a Session, ``run`` and ``--method``, with its hyperparameter as a flag."""
    assert fedem_jax.methods()["HalfAvg"] is own_method
    cfg = fedem_jax.config("synthetic", method="HalfAvg", step=0.3, **SMALL)
    assert cfg.hyperparams.step == 0.3
    rows = list(fedem_jax.Session(cfg).rounds())  # (run without files: tests/examples' own_method)
    flags = ["--method", "HalfAvg", "--step", "0.3", "--quiet", "--plots", "false", "--tensorboard", "false"]
    flags += [f"--{k}={v}" for k, v in SMALL.items()]
    assert main([*flags, "--workdir", str(tmp_path / "cli")]) == 0
    assert _written_rows(tmp_path / "cli") == _untimed(rows)
    assert main([*flags, "--step", "2", "--workdir", str(tmp_path / "bad")]) == 2
    assert "--step must be in (0, 1], got 2.0" in capsys.readouterr().err


def test_register_refuses_what_it_cannot_take(own_method):
    fedem_jax.register(own_method)  # the same object again: nothing happens
    other = fedem_jax.Method("HalfAvg", own_method.factory, "another", own_method.hyperparams)
    with pytest.raises(fedem_jax.ConfigError, match="'HalfAvg' is registered already"):
        fedem_jax.register(other)
    with pytest.raises(fedem_jax.ConfigError, match="takes a fedem_jax Method"):
        fedem_jax.register("FedAvg")
    with pytest.raises(fedem_jax.ConfigError, match="one of fedem_jax's own methods"):
        fedem_jax.unregister("FedEM")


def test_a_plugin_file_on_the_command_line(tmp_path, capsys):
    """``--plugin examples/own_method.py``: a fresh process learns the method before ``--method``."""
    flags = ["--plugin", os.path.join(ROOT, "examples", "own_method.py"), "--method", "HalfAvg", "--quiet",
             "--plots", "false", "--tensorboard", "false", "--checkpoint_every", "0"]  # fmt: skip
    flags += [f"--{k}={v}" for k, v in SMALL.items()]
    done = subprocess.run([sys.executable, "-m", "fedem_jax.main", *flags, "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.load(open(tmp_path / "w" / "summary.json"))["method"] == "HalfAvg"

    assert main(["--plugin", "no_such_module_x"]) == 2
    assert capsys.readouterr().err.startswith("error: --plugin no_such_module_x: cannot import it")


def test_an_installed_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A package declaring ``fedem_jax.methods`` (here a dist-info folder on ``sys.path``, as pip
    installs one) is registered when the registry is first read."""
    (tmp_path / "my_plugin.py").write_text(
        "import fedem_jax\n"
        "base = fedem_jax.methods()['FedAvg']\n"
        "METHOD = fedem_jax.Method('PluggedAvg', base.factory, 'from a plug-in', base.hyperparams)\n"
    )
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fedem_jax.methods]\nplugged = my_plugin:METHOD\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import fedem_jax; "
        "print('PluggedAvg' in fedem_jax.methods(), fedem_jax.config(method='PluggedAvg').method)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "PluggedAvg"], done.stderr


def test_the_readme_python_example_runs(capsys):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        fedem_jax.unregister("MyFedAvg")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["0", "5", "10"]
    assert 0.5 < float(lines[-1]) <= 1.0  # FedAvg's final test accuracy on the synthetic task


@pytest.mark.parametrize(
    "example,argv",
    [
        ("quickstart.py", ["--rounds", "4", "--clients", "10", "--test_per_client", "40"]),
        ("own_data_and_model.py", ["--rounds", "4", "--clients", "6"]),
        ("own_method.py", ["--rounds", "3", "--clients", "10"]),
    ],
)
def test_the_examples_run(example, argv, monkeypatch, capsys):
    module = runpy.run_path(os.path.join(ROOT, "examples", example))
    try:
        summary = module["main"](argv)
    finally:
        if example == "own_method.py":
            fedem_jax.unregister("HalfAvg")
    assert summary["n_rounds"] == int(argv[1]) and 0 <= summary["test_accuracy"] <= 1
    assert "test accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------------------- the house
PACKAGE = os.path.join(ROOT, "fedem_jax")


def _imports() -> dict[str, set[str]]:
    """Module -> the fedem_jax modules it imports (at any depth of the file)."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedem_jax"):
                    found.add(node.module)
                    found |= {f"{node.module}.{alias.name}" for alias in node.names}
                elif isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names if alias.name.startswith("fedem_jax")}
            graph[module] = found
    return {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}


def test_no_import_circles():
    graph = _imports()
    graph.pop("fedem_jax")  # the top level's lazy names import nothing
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for other in graph.get(module, ()):
            if other in path:
                raise AssertionError(" -> ".join([*path[path.index(other) :], other]))
            if state.get(other) != 2:
                visit(other, [*path, other])
        state[module] = 2

    for module in graph:
        if state.get(module) != 2:
            visit(module, [module])


def test_the_top_level_holds_the_api_the_cli_and_subpackages():
    entries = sorted(e for e in os.listdir(PACKAGE) if not e.startswith("__pycache__"))
    files = [e for e in entries if e.endswith(".py")]
    assert files == ["__init__.py", "errors.py", "main.py", "plot.py"]
    assert {e for e in entries if e not in files} == {
        "algorithms", "core", "data", "execution", "models", "reporting", "settings", "training"
    }  # fmt: skip
    for name in fedem_jax.__all__:
        assert getattr(fedem_jax, name) is not None


def test_every_subpackage_is_installed_by_a_plain_pip_install():
    """``pip install .`` (not editable) installs only the packages pyproject.toml lists."""
    with open(os.path.join(os.path.dirname(PACKAGE), "pyproject.toml")) as f:
        listed = re.search(r"^packages = \[(.*?)\]", f.read(), re.S | re.M).group(1)
    listed = set(re.findall(r'"([\w.]+)"', listed))
    found = {
        os.path.relpath(root, os.path.dirname(PACKAGE)).replace(os.sep, ".")
        for root, _, files in os.walk(PACKAGE)
        if "__init__.py" in files
    }
    assert found - listed == set()
