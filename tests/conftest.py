import os
import sys
import tempfile

# Tests run on the CPU, single-threaded XLA is not required, but keep TF quiet if imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling is most of the suite's time, and these programs are tiny: XLA's backend optimisations
# off cut it by ~40 %. The same tests pass with them on (JAX_DISABLE_MOST_OPTIMIZATIONS=0 python -m
# pytest), which is how the programs run outside the tests.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    """One XLA compilation cache for the session, shared by the xdist workers and the subprocesses
    the tests start (they inherit the environment): many tests compile the same round, e.g. a
    reference run and its interrupted-and-resumed twin. Compiled programs are keyed by their HLO
    and compiler options, so results are unchanged; only the compile time is saved."""
    if "workerinput" in config.__dict__ or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # an xdist worker (the controller set it up) or a cache chosen by the user
    # Every temporary file of the session under one folder removed at the end, also those that
    # libraries leave behind (tfds makes an empty "tmp*tfds" folder each time it builds a builder).
    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="fedem_jax_tests_")
    tempfile.tempdir = None  # read TMPDIR again
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedem_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    root = os.environ.get("TMPDIR", "")
    ours = os.path.basename(root).startswith("fedem_jax_tests_")
    if ours and "workerinput" not in config.__dict__:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


# Tests that take 15-35 s each (subprocesses with 8 devices or 2 processes, kills and resumes,
# conv nets): started first, so that no worker is left running one of them alone at the end.
SLOW_FIRST = (
    "test_sharding.py::",
    "test_run_product.py::test_sigkill",
    "test_multiprocess.py::test_distributed_checkpoints_resume",
    "test_multiprocess.py::test_host_cohorts",
    "test_multiprocess.py::test_two_processes",
    "test_sweep.py::test_training_settings_sweep",
    "test_mobilenet.py::",
    "test_run_product.py::test_extending",
    "test_leaf.py::test_leaf_datasets_end_to_end",
    "test_sweep.py::test_a_sweep_resumes",
    "test_splits.py::test_cifar100_end_to_end",
    "test_cifar10.py::test_cifar10_end_to_end",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, prefix in enumerate(SLOW_FIRST):
            if prefix in item.nodeid:
                return i
        return len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the rest keep their order
