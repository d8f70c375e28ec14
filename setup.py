"""Build hook for the optional C kernels; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the install goes on and snncutoff uses its
pure-torch code paths (same values, slower on large traces)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "snncutoff._native._kernels",
            sources=["snncutoff/_native/top2.c", "snncutoff/_native/learned.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
