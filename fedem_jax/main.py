"""Command line: ``python -m fedem_jax.main --dataset synthetic --method FedEM ...``.

Thin by design: parse and validate the flags, :func:`fedem_jax.run` the experiment with the
default callbacks, print the summary. Every user error (:mod:`fedem_jax.errors`) is one line and
its exit code, mapped here in one place; never a traceback. ``--plugin MODULE_OR_FILE``
(repeatable) imports a module that registers methods of its own first.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # First of all, before jax is imported: a Ctrl-C or SIGTERM only sets a flag, checked at safe
    # points (an exception landing inside jaxlib's initialisation or XLA's compiler can crash it).
    from fedem_jax.training.safety import StopSignals, resilient_streams

    resilient_streams()  # `| head -1` or a full disk on stdout: the run goes on, silently
    try:
        with StopSignals() as stop:
            return _main(sys.argv[1:] if argv is None else list(argv), stop)
    except KeyboardInterrupt:  # not in the main thread: no handler could be installed
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return 130


def _main(argv: list[str], stop) -> int:
    from fedem_jax.errors import EXIT_CODES, FedemError

    try:
        cfg = _configure(argv)
        if stop.requested:
            print("interrupted before training started; nothing to resume", file=sys.stderr)
            return EXIT_CODES[stop.signum]
        summary = _train(cfg, stop)
    except FedemError as err:  # every user error: one line and its exit code
        print(err.message(), file=sys.stderr)
        return err.exit_code
    if summary is not None:
        _print_summary(summary, cfg)
    return 0


def _configure(argv: list[str]):
    """Plug-ins, the flags (dataset presets under them), the processes and the backend."""
    from fedem_jax.algorithms.plugins import plugin_flags
    from fedem_jax.algorithms.registry import load_plugins

    plugins, argv = plugin_flags(argv)
    load_plugins(plugins)
    from fedem_jax.settings.cli import resolve

    cfg = resolve(argv)
    if cfg.layout.distributed:
        from fedem_jax.execution.distributed import initialize

        quiet = cfg.output.quiet
        initialize(cfg.layout, (lambda *_: None) if quiet else (lambda line: print(line, file=sys.stderr)))
    _check_backend()  # after jax.distributed.initialize(), which must come first
    return cfg


def _train(cfg, stop) -> dict | None:
    """The summary; None on processes that do not report (``--distributed``: all but process 0)."""
    from fedem_jax.execution.distributed import is_main_process
    from fedem_jax.training.loop import run
    from fedem_jax.training.safety import ThirdPartyLog
    from fedem_jax.training.workdir import LOG_FILE

    main_process = is_main_process()  # the one that writes the workdir and reports
    if main_process:
        # Other libraries' log records and unraisable exceptions (orbax's, when a checkpoint cannot
        # be written or read) go to the workdir's log for the rest of the process, not the terminal.
        ThirdPartyLog(cfg.output.workdir, LOG_FILE).install()
    log = (lambda *_: None) if cfg.output.quiet or not main_process else print
    summary = run(cfg, log=log, stop=stop)
    return summary if main_process else None


def _print_summary(summary: dict, cfg) -> None:
    split = "val" if cfg.output.validation else "test"
    unseen = (
        f"unseen clients {summary['unseen_test_accuracy']:.4f}, " if "unseen_test_accuracy" in summary else ""
    )
    rounds = summary.get("rounds_done", summary["n_rounds"])  # fewer if a callback ended it early
    privacy = summary.get("privacy")
    spent = f"epsilon {summary['epsilon_spent']:.3g} at delta {privacy['dp_delta']:.3g}, " if privacy else ""
    print(
        f"{summary['method']} on {summary['dataset']}, {rounds} rounds: "
        f"{split} accuracy {summary[split + '_accuracy']:.4f} "
        f"(bottom 10% {summary[split + '_accuracy_bottom10']:.4f}), {unseen}"
        f"train accuracy {summary['train_accuracy']:.4f}, {spent}"
        f"{summary['seconds_per_round']:.3f} s/round, compile {summary['compile_seconds']:.1f} s "
        f"-> {cfg.output.workdir}/summary.json"
    )


def _check_backend() -> None:
    """Refuse, in one line, a backend JAX cannot start (``JAX_PLATFORMS=gpu`` without a GPU)."""
    import os

    import jax

    from fedem_jax.errors import ConfigError

    try:
        jax.devices()
    except RuntimeError as err:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        reason = str(err).strip().splitlines()[0][:200]
        asked = f"JAX_PLATFORMS={platforms}: " if platforms else ""
        raise ConfigError(f"{asked}JAX cannot start a backend here ({reason})") from None


if __name__ == "__main__":
    sys.exit(main())
