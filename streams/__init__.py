"""Inputs of the engine: the Faust app and agents, the scan API publisher, the local driver."""
