"""Hypothesis profiles: `ci` (built in, derandomized, loaded when CI is set) for CI,
`long` for soak runs (HYPOTHESIS_PROFILE=long)."""

import os

from hypothesis import settings

settings.register_profile("long", max_examples=5000, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif not os.environ.get("CI"):
    settings.load_profile("dev")

pytest_plugins = ["pytester"]  # tests/test_plugin.py runs pytest sessions in-process
