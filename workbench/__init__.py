"""LM Workbench."""
