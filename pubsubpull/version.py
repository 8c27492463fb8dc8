"""The package's version, in a module of its own: both sides read it (User-Agent,
the service document) without importing the public API's modules."""

__version__ = "0.1.0.dev0"
