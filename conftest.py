"""Set before anything imports broker: this test run's own shared-memory prefix.

Every segment the run makes (its processes inherit the environment) is named
brk-tPID.*, so the leak check (tests/conftest.py) and the sweeps see only this
run's, and two runs on one machine never count, sweep or unlink each other's.
"""
import os

os.environ["BROKER_SHM_PREFIX"] = f"brk-t{os.getpid()}"
