"""Concrete networks. Importing this package registers every model with the registry."""
from __future__ import annotations

import importlib
import pkgutil

# Import every module in this package so its @register_model decorators run.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
