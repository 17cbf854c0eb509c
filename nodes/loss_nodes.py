"""PSLD nodes (being written)."""
NODES = []
