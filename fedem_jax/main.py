"""Command line: ``python -m fedem_jax.main --dataset synthetic --method FedEM ...``.

Thin by design: parse and validate the flags, run the experiment, print the summary. User errors
(bad flags, missing data, divergence) exit non-zero with a one-line message, never a traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # First of all, before jax is imported: a Ctrl-C or SIGTERM only sets a flag, checked at safe
    # points (an exception landing inside jaxlib's initialisation or XLA's compiler can crash it).
    from fedem_jax.safety import StopSignals, resilient_streams

    resilient_streams()  # `| head -1` or a full disk on stdout: the run goes on, silently
    try:
        with StopSignals() as stop:
            return _main(argv, stop)
    except KeyboardInterrupt:  # not in the main thread: no handler could be installed
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return 130


def _main(argv: list[str] | None, stop) -> int:
    from fedem_jax.config import ConfigError, resolve
    from fedem_jax.safety import EXIT_CODES, ThirdPartyLog
    from fedem_jax.workdir import LOG_FILE

    try:
        cfg = resolve(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if cfg.layout.distributed:
        from fedem_jax.distributed import initialize

        log = (lambda *_: None) if cfg.output.quiet else (lambda line: print(line, file=sys.stderr))
        try:
            initialize(cfg.layout, log)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    problem = _backend_problem()  # after jax.distributed.initialize(), which must come first
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from fedem_jax.data import DataError
    from fedem_jax.distributed import is_main_process

    if is_main_process():  # the one that writes the workdir
        # Other libraries' log records and unraisable exceptions (orbax's, when a checkpoint cannot
        # be written or read) go to the workdir's log for the rest of the process, not the terminal.
        ThirdPartyLog(cfg.output.workdir, LOG_FILE).install()
    from fedem_jax.loop import DivergenceError, run
    from fedem_jax.outputs import OutputError
    from fedem_jax.safety import Interrupted

    if stop.requested:
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return EXIT_CODES[stop.signum]
    log = (lambda *_: None) if cfg.output.quiet or not is_main_process() else print
    try:
        summary = run(cfg, log=log, stop=stop)
    except ConfigError as err:  # found once the workdir's checkpoint is read
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except DivergenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as interrupted:
        print(interrupted.message(), file=sys.stderr)
        return interrupted.exit_code
    if not is_main_process():
        return 0
    split = "val" if cfg.output.validation else "test"
    unseen = (
        f"unseen clients {summary['unseen_test_accuracy']:.4f}, " if "unseen_test_accuracy" in summary else ""
    )
    print(
        f"{summary['method']} on {summary['dataset']}, {summary['n_rounds']} rounds: "
        f"{split} accuracy {summary[split + '_accuracy']:.4f} "
        f"(bottom 10% {summary[split + '_accuracy_bottom10']:.4f}), {unseen}"
        f"train accuracy {summary['train_accuracy']:.4f}, "
        f"{summary['seconds_per_round']:.3f} s/round, compile {summary['compile_seconds']:.1f} s "
        f"-> {cfg.output.workdir}/summary.json"
    )
    return 0


def _backend_problem() -> str:
    """Why JAX cannot start its backend (e.g. ``JAX_PLATFORMS=gpu`` on a machine without one), or ''."""
    import os

    import jax

    try:
        jax.devices()
    except RuntimeError as err:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        reason = str(err).strip().splitlines()[0][:200]
        asked = f"JAX_PLATFORMS={platforms}: " if platforms else ""
        return f"{asked}JAX cannot start a backend here ({reason})"
    return ""


if __name__ == "__main__":
    sys.exit(main())
