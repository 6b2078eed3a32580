"""jfb_inverse.models (see ARCHITECTURE.md)."""
