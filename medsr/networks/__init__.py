"""Networks: layers, reversible blocks, generators and discriminators, behind one registry."""
from __future__ import annotations

from medsr.networks.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
