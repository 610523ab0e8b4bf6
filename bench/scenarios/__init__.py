"""What bench/run.py can do with the systems of a spec: each module's ``run(bench)`` returns the exit status."""
