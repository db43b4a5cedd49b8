"""proto layer (see DESIGN.md)."""
