"""Running experiments: build once (:mod:`.experiment`, :mod:`.sweep`), step a :class:`.session.Session`,
or :func:`.loop.run` it with callbacks (:mod:`.callbacks`: metrics files, checkpoints, plots, progress,
lock and signals); evaluation rows, checkpoints and the workdir's safety.

Kept free of imports here: ``python -m fedem_jax.main`` installs its signal handlers from
:mod:`.safety` before JAX is loaded."""
