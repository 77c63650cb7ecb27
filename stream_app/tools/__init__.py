"""Tools to try, tune and trust the service: replay, simulate, evaluate and tail.

Each module keeps its logic in plain functions that take their dependencies as
arguments, so the command line only wires arguments to them and tests can check the
logic without a broker.
"""
