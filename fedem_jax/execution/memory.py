"""Will the run fit? Its memory, checked before the big allocations, not found out by a crash.

Two checks, each refusing the run with one line (exit 2) and what to change:

- :func:`check_state`, before the state is created: the state's exact size from its shapes
  (``jax.eval_shape`` of the method's ``init``; per-client fields are clients x learners x
  parameters for Ditto-like methods and optimiser slots), per device, against free memory;
- :func:`check_compiled`, after the round is compiled and before it runs: XLA's own count of the
  round's temporary buffers and outputs (``Compiled.memory_analysis()``).

On GPU/TPU the automatic layout vmaps only as many clients as fit (:func:`client_chunk_that_fits`,
from the backward pass's residuals, :func:`training_step_bytes`).

Free memory is the allocator's limit less what is in use on GPU/TPU, and the kernel's
``MemAvailable`` (or the cgroup's limit, if lower) on CPU.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from fedem_jax.errors import ConfigError

GIB = 2**30
# Leave this fraction free: allocator fragmentation, the evaluation's buffers, Python's own heap.
HEADROOM = 0.9

SUGGESTION = (
    "use fewer clients (--n_clients) or components (--n_learners), a smaller --batch_size, or train "
    "clients a few at a time (--client_chunk 1 or k) with learners looped (--learner_vmap 0)"
)


def free_bytes(device=None) -> int | None:
    """Bytes free for new buffers on ``device`` (default: the first one); None if unknown."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return host_free_bytes()


def host_free_bytes() -> int | None:
    """The host's available memory (``MemAvailable``, or a cgroup v2 limit if lower); None if unknown."""
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:  # cgroup v2: a container's limit, which MemAvailable does not see
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            text = limit.read().strip()
            if text != "max":
                candidates.append(int(text) - int(used.read().strip()))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def tree_bytes(tree) -> int:
    """Bytes of the arrays (or shape structs) of ``tree``."""
    return int(sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)))


def state_bytes_per_device(state_shapes, n_devices: int) -> int:
    """The state's bytes on one device: client fields split over ``n_devices``, the rest whole."""
    total = 0
    for field in dataclasses.fields(state_shapes):
        size = tree_bytes(getattr(state_shapes, field.name))
        total += -(-size // n_devices) if field.name in state_shapes.CLIENT_FIELDS else size
    return total


def _refuse(what: str, needed: int, free: int) -> None:
    raise ConfigError(
        f"not enough memory: {what} needs about {needed / GIB:.2f} GiB but "
        f"{jax.default_backend()} device 0 has {free / GIB:.2f} GiB free; {SUGGESTION}"
    )


def check_state(init, data, n_devices: int = 1, free: int | None = None) -> None:
    """Refuse a run whose initial state cannot fit (``init``: the method's ``init(data)``)."""
    free = free_bytes() if free is None else free
    if free is None:
        return
    shapes = jax.eval_shape(lambda: init(data))
    needed = state_bytes_per_device(shapes, n_devices)
    if needed > HEADROOM * free:
        _refuse("the method's state (models, per-client copies and optimiser slots)", needed, free)


def round_bytes(compiled) -> int | None:
    """Device bytes one compiled round holds at once: its arguments (state and data), temporary
    buffers and new outputs, less what the outputs reuse; ``None`` where XLA does not say."""
    analysis = compiled.memory_analysis() if hasattr(compiled, "memory_analysis") else None
    fields = ("argument_size_in_bytes", "temp_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
    sizes = [getattr(analysis, field, None) for field in fields]
    if analysis is None or None in sizes:
        return None
    arguments, temp, output, alias = sizes
    return int(arguments + temp + output - alias)


def check_compiled(compiled, free: int | None = None) -> None:
    """Refuse a compiled round whose temporary buffers and new outputs cannot fit beside what is
    already allocated (its arguments, the state and data, are in memory already)."""
    free = free_bytes() if free is None else free
    analysis = compiled.memory_analysis() if hasattr(compiled, "memory_analysis") else None
    if free is None or analysis is None:
        return
    needed = analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
    if needed > HEADROOM * free:
        _refuse("one round (XLA's temporary buffers and outputs)", int(needed), free)


# ---------------------------------------------------------------------------- automatic chunks
# Share of the free memory the vmapped clients' backward passes may fill; the rest is for the
# gradients, optimiser temporaries and what XLA adds (check_compiled still has the last word).
ACTIVATION_SHARE = 0.5


def training_step_bytes(model, stateful: bool, sample, batch_size: int) -> int:
    """Bytes one learner's training step on one batch keeps for its backward pass: the
    residuals of ``jax.vjp`` of the model on a batch of ``sample``'s shape (shapes only: nothing
    is computed or allocated). ``stateful``: BatchNorm models, run in train mode."""
    x = jax.ShapeDtypeStruct((batch_size, *sample.shape[1:]), sample.dtype)
    one = jax.ShapeDtypeStruct((1, *sample.shape[1:]), sample.dtype)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), one)

    def output_sum(v, x):
        if stateful:
            return model.apply(v, x, train=True, mutable=["batch_stats"])[0].sum()
        return model.apply(v, x).sum()

    residuals = jax.eval_shape(lambda v, x: jax.vjp(lambda v: output_sum(v, x), v)[1], variables, x)
    return tree_bytes(residuals)


def client_chunk_that_fits(per_client_bytes: int, clients_per_device: int, free: int | None):
    """``(client_chunk, why)``: 0 (all clients vmapped) if their training steps fit in
    ``ACTIVATION_SHARE`` of ``free``; else the fewest equal chunks of clients that fit (at
    least one client at a time), so that no chunk is mostly padding."""
    if free is None:
        return 0, "free memory unknown"
    fits = int(ACTIVATION_SHARE * free // max(per_client_bytes, 1))
    why = (
        f"one client's training step keeps about {per_client_bytes / GIB:.2f} GiB for its backward "
        f"pass, {min(fits, clients_per_device)} of {clients_per_device} fit in "
        f"{ACTIVATION_SHARE:.0%} of {free / GIB:.1f} GiB free"
    )
    if fits >= clients_per_device:
        return 0, why
    n_chunks = -(-clients_per_device // max(fits, 1))
    return -(-clients_per_device // n_chunks), why
