"""The ``jfb-inverse`` command-line application (installed as ``jfb_inverse.cli``)."""
