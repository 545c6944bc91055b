"""train layer (see docs/architecture.md)."""
