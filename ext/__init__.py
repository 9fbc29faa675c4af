"""Compiled extensions of scanstream (built by setup.py from the .pyx sources here)."""
