"""``run(cfg)``: a :class:`~fedem_jax.training.session.Session` trained to ``--n_rounds`` with
callbacks around it; it knows no method.

The command line passes :func:`~fedem_jax.training.callbacks.default_callbacks`, which write into
``config.workdir``: ``config.json``, ``metrics.jsonl``, TensorBoard events, ``clients.csv``,
``summary.json`` (see :mod:`fedem_jax.reporting.outputs`) and ``checkpoints/`` (see
:mod:`fedem_jax.training.checkpoint`). With ``callbacks=[]`` nothing is written.
"""

from __future__ import annotations

from fedem_jax.data import FederatedData
from fedem_jax.execution.distributed import is_main_process
from fedem_jax.settings.schema import Config
from fedem_jax.training.callbacks import Callback, default_callbacks
from fedem_jax.training.safety import StopSignals
from fedem_jax.training.session import Session, as_rows


def run(
    cfg: Config,
    data: FederatedData | None = None,
    callbacks: list[Callback] | None = None,
    *,
    model=None,
    log=print,
    stop: StopSignals | None = None,
) -> dict:
    """Train ``cfg`` end to end and return its summary (``summary.json``'s content).

    ``callbacks``: the hooks around the session (default: :func:`default_callbacks`, what the
    command line does: outputs in the workdir, checkpoints and resume, the workdir's lock, signal
    handling; SIGINT/SIGTERM stop it after a round, saved, raising
    :class:`~fedem_jax.errors.Interrupted`). ``stop``: signal handlers installed already.
    """
    if callbacks is None:
        callbacks = default_callbacks(cfg, stop, is_main_process())
    session = Session(cfg, data, model=model, log=log)
    error = None
    try:
        for callback in callbacks:
            callback.on_start(session)
        session.check_stop()  # a signal while the workdir was checked
        session.build()
        for callback in callbacks:
            callback.on_build(session)
        session.check_stop()  # a signal while the data were loading
        session.compile()
        session.check_stop()
        _train(session, callbacks)
        summary = session.summary()
        for callback in callbacks:
            callback.on_end(session, summary)
        return summary
    except BaseException as err:
        error = err
        raise
    finally:
        for callback in reversed(callbacks):
            callback.close(session, error)


def _train(session: Session, callbacks: list[Callback]) -> None:
    """Rounds from the session's round to ``--n_rounds`` (or until a callback calls
    :meth:`Session.end_early`): evaluated every ``--log_freq`` rounds and after the last (round 0,
    the model before training, first, as the reference logs)."""
    if session.round == 0 and not session.history:
        _evaluated(session, callbacks)
    while not session.training_done:
        session.check_stop()
        metrics = session.step()
        if session.evaluation_due():
            _evaluated(session, callbacks)
        for callback in callbacks:
            callback.after_round(session, metrics)
    if session.history and session.history[-1]["round"] != session.round:  # ended early
        _evaluated(session, callbacks)


def _evaluated(session: Session, callbacks: list[Callback]) -> None:
    rows = as_rows(session.evaluate())
    for callback in callbacks:
        callback.after_evaluation(session, rows)
