"""The maintainers' tools (README.md): run from the repository root as python -m scripts.NAME."""
