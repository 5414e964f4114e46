"""Proactive Microsoft Teams messaging at scale on Azure Functions.

The public surface of the package is deliberately small: the version. Each subpackage exports its own.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
