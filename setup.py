"""Builds the Cython extensions in ext/; all metadata lives in pyproject.toml."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("ext.codec", ["ext/codec.pyx"], include_dirs=[numpy.get_include()],
              extra_compile_args=["-O3"]),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
