import os
import sys

# Tests run on the CPU, single-threaded XLA is not required, but keep TF quiet if imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
