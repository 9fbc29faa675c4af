"""scanstream: a streaming engine for one-item-one-code programs.

The installed package holds the composition root (``scanstream.cli``, ``scanstream.wiring``,
``scanstream.dashboard``) and, as its subpackages, the layers it assembles, bottom up:
``scanstream.ext`` (Cython hot loops), ``scanstream.engine`` (pure stages and state contracts),
``scanstream.streams`` (data in) and ``scanstream.sinks`` (data out).  docs/ARCHITECTURE.md
describes how they fit together.
"""
