"""jfb_inverse.training (see ARCHITECTURE.md)."""
