"""Synthetic WRF history files with convective labels from our own reference scheme."""
