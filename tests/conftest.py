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
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedem_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    ours = os.path.basename(cache).startswith("fedem_jax_test_xla_cache_")
    if ours and "workerinput" not in config.__dict__:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
