"""herbarium2field: identify plant species in field photos, trained mostly on herbarium sheets."""

__version__ = "0.1.0"
