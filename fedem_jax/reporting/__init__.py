"""Files a person reads after a run: metrics and summaries (:mod:`.outputs`), plots of runs
(:mod:`.plot`) and of the federation (:mod:`.federation_plots`). Plain NumPy and matplotlib: no JAX."""
