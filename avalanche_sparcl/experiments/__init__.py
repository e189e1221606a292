"""Experiment configs, runner and report behind the ``sparcl-bench`` command."""
