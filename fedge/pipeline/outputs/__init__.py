"""A run's outputs: typed results, report.md, plots, TensorBoard scalars."""
