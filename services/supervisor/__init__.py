"""``warren up``: one supervisor that runs every Warren service as its own OS process.

``settings`` reads what to run, ``ports`` and ``cat`` decide where, ``plan`` builds each
child's command and environment, ``child`` and ``supervisor`` run them, ``up`` ties it
together for the command line. docs/console.md describes the behaviour.
"""
