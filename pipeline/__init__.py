"""Hearken: read the whole customer message, find the actual ask, route it.

The public surface is small: ``Pipeline`` (built from a model folder), ``Message`` in and
``TriageResult`` out. Serving, batch re-triage and evaluation all use the same ``Pipeline``.
"""

from pipeline.schema import Message, TriageResult

__all__ = ["Message", "Pipeline", "TriageResult", "load_pipeline"]
__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: importing the schema must not import torch
    if name in ("Pipeline", "load_pipeline"):
        from pipeline import triage

        return getattr(triage, name)
    raise AttributeError(name)
