"""The package version, in one place (records name it; ``mcmia_helpers.__version__`` reads it)."""

__version__ = "0.1.0"
