"""The runner: runs registered Python jobs in child processes and streams their output."""
