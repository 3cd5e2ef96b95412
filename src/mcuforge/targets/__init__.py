"""Targets that run a generated library: the numpy reference and the host C compiler."""
