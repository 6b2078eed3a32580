"""Trained models shipped with the package (``--checkpoint builtin:NAME``)."""
