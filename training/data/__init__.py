"""Datasets: the documented parquet schema, the synthetic generator and real loaders."""
