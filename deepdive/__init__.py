"""Helpers shared by the Transformer Deep Dive notebooks.

Only what learners are not asked to write in the module that uses it lives here:
nbgrader ships these files unchanged, so no open exercise's answer may appear in them.
"""

from deepdive.utils import get_device, set_seed

__all__ = ["get_device", "set_seed"]
__version__ = "0.1.0"
