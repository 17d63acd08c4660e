"""The one error family of bayesnas: every error it raises on purpose is a :class:`BayesNASError`, whose message is
one line for the command line (which catches this base once). Each subclass also derives from the built-in error
its kind has always been (``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses
keep working. The subclasses live beside what raises them; the two that the base modules share are here."""

from __future__ import annotations


class BayesNASError(Exception):
    """An error bayesnas raises on purpose, with a one-line message that says what is wrong and what to do."""


class ConfigError(BayesNASError, ValueError):
    """A configuration (preset name, config file, option value) that cannot describe a search."""
