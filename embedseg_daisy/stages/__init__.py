"""daisy stages of a run, one module per stage (see docs/design.md)."""
