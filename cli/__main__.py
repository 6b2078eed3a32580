"""``python -m jfb_inverse.cli`` runs the command-line application."""

from jfb_inverse.cli.app import main

main()
