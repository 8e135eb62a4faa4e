"""Offline pipelines over WRF netCDF output: reading, synthetic data, preparation, training, evaluation."""
