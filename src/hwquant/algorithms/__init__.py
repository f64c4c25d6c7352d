"""Algorithms that change models: one file per method, ``apply(model, data, config) -> Report``."""
