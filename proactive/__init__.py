"""Proactive Microsoft Teams messaging at scale on Azure Functions.

The public surface of the package is deliberately small: the version. Each subpackage exports its own
and says in its docstring what it owns and what it may import (tests/unit/test_import_rules.py checks).
May import: nothing.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
