"""Build hook for the optional C kernel; all metadata lives in pyproject.toml.

``optional=True``: without a C compiler the install goes on and snncutoff uses its
pure-torch code paths (same values, slower on large traces)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "snncutoff._native._top2",
            sources=["snncutoff/_native/top2.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
