"""Build the C hot path: setup.py's only job is cffi's out-of-line API module."""
from setuptools import setup

setup(cffi_modules=["src/shmbroker/_build.py:ffibuilder"])
