"""Offline data sources (installed as ``jfb_inverse.datasets``)."""
