"""The documentation's tools (README.md): run from the repository root as python -m docs_tools.NAME."""
