"""Builds the Cython extensions: every ext/NAME.pyx becomes the module scanstream.ext.NAME.

All package metadata lives in pyproject.toml.
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(f"scanstream.ext.{pyx.stem}", [f"ext/{pyx.name}"], include_dirs=[numpy.get_include()],
              extra_compile_args=["-O3"])
    for pyx in sorted(Path(__file__).parent.joinpath("ext").glob("*.pyx"))
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
