"""Warren's built-in jobs, one module each.

Each module's ``JOB`` is registered like any installed package's job: as an entry point
of the group ``warren.jobs`` in pyproject.toml (services/runner/registry.py finds them).
"""
