"""jfb_inverse.consistency (see ARCHITECTURE.md)."""
