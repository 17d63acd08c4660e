"""Search methods: each is a thin model/guide (or proposal) pair behind the hooks of :mod:`bayesnas.methods.base`.

A method is one module that defines its class with ``@register`` (its Pyro model in ``models/``, its guide or
proposal in ``guides/``); importing this package imports the built-in ones, and a method defined anywhere else
registers itself the same way when its module is imported.
"""

from __future__ import annotations

from bayesnas.methods import gdas, oneshot, pcnas, pgnas, random_search, vinnas  # noqa: F401 (they register)
from bayesnas.methods.base import (
    DATA_SHAPE,
    METHODS,
    Phase,
    SearchMethod,
    Selection,
    UnknownMethodError,
    get_method,
    parse_options,
    register,
    shaped_space,
)

__all__ = ["DATA_SHAPE", "METHODS", "Phase", "SearchMethod", "Selection", "UnknownMethodError", "get_method",
           "parse_options", "register", "shaped_space"]
