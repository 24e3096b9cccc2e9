"""Experiment settings: the schema (frozen dataclasses in sections, :mod:`.schema`), the checks of
every value (:mod:`.checks`), the per-dataset presets (:mod:`.presets`) and the command line
(:mod:`.cli`)."""
