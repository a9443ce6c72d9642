"""Experiment drivers built on the library: ablations."""
