"""The documentation works: every tutorial's code runs as written (at its small sizes), every flag
has help text, the generated references cover every flag and method, the API page covers the public
API, and every relative link and included file of the README and the docs exists."""

import glob
import json
import os
import re

import numpy as np
import pytest
from docs_blocks import python_blocks, run_page

import fedem_jax
from fedem_jax.settings import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
# Pages whose Python blocks the tests below run; a page with Python blocks must be one of them.
RUN_PAGES = (
    "getting-started.md",
    "tutorials/fedem-synthetic.md",
    "tutorials/own-data.md",
    "tutorials/cifar10.md",
)


def _pages():
    return sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


def test_the_getting_started_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = run_page(os.path.join(DOCS, "getting-started.md"))
    assert page["row"]["round"] == 10 and page["session"].pi.shape == (30, 3)


def test_the_synthetic_tutorial_runs_and_fedem_beats_fedavg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = run_page(os.path.join(DOCS, "tutorials/fedem-synthetic.md"))
    assert page["fedem"]["test_accuracy"] > page["fedavg"]["test_accuracy"]
    assert page["pi"].shape == (40, 3) and np.allclose(page["pi"].sum(axis=1), 1, atol=1e-5)
    assert page["best"] == pytest.approx(page["history"][-1]["pi_tv_to_truth"], abs=1e-5)
    assert (tmp_path / "fedem_synthetic.png").stat().st_size > 0


def test_the_own_data_tutorial_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = run_page(os.path.join(DOCS, "tutorials/own-data.md"))
    assert page["session"].round == 20 and page["session"].pi.shape == (12, 2)
    assert page["row"]["round"] == 20 and page["row"]["test_accuracy"] > 0.6


def test_the_cifar10_tutorial_runs_on_a_small_tfds_folder(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from helpers import write_tfds_folder

    rng = np.random.default_rng(0)

    def images(n):
        pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        return {"image": pixels, "label": rng.integers(0, 10, n)}

    write_tfds_folder(tmp_path / "tfds", "cifar10", {"train": images(200), "test": images(60)})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.chdir(tmp_path)
    run_page(os.path.join(DOCS, "tutorials/cifar10.md"))
    rows = [json.loads(line) for line in open(tmp_path / "runs/cifar10_smoke/metrics.jsonl")]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert (tmp_path / "runs/cifar10_smoke/summary.json").exists()


def test_every_page_with_python_code_is_run_by_the_tests():
    with_code = {os.path.relpath(page, DOCS) for page in _pages() if python_blocks(open(page).read())}
    assert with_code == set(RUN_PAGES)


def test_every_flag_has_help_text():
    for flag, text in reference.flag_help().items():
        assert text.split(" (default")[0].strip(), f"{flag} has no help text"


def test_the_generated_reference_lists_every_flag_and_method():
    flags = reference.flags_markdown()
    for flag in reference.flag_help():
        assert f"`{flag}`" in flags
    methods = reference.methods_markdown()
    for name in fedem_jax.methods():
        assert f"### {name}\n" in methods
    presets = reference.presets_markdown()
    assert "`cifar10` | `--init torch`" in presets and "`--lr 0.1`" in presets


def test_the_docs_hook_fills_every_marker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hooks", os.path.join(DOCS, "hooks.py"))
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    for page in _pages():
        text = hooks.on_page_markdown(open(page).read())
        assert "<!-- generated:" not in text, page


def test_the_api_page_covers_the_public_api():
    text = open(os.path.join(DOCS, "api.md")).read()
    for name in fedem_jax._API:
        assert re.search(rf"::: fedem_jax\.[\w.]*\b{name}\b|members: \[[^\]]*\b{name}\b", text), name


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SNIPPET = re.compile(r'--8<-- "([^":]+)')


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *(os.path.relpath(p, ROOT) for p in _pages())])
def test_relative_links_and_included_files_exist(page):
    text = open(os.path.join(ROOT, page)).read()
    here = os.path.dirname(os.path.join(ROOT, page))
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+://", target):
            assert os.path.exists(os.path.join(here, target)), f"{page}: {target}"
    for included in SNIPPET.findall(text):
        assert os.path.exists(os.path.join(ROOT, included)), f"{page}: {included}"
