"""`fedge audit`: the run's training replayed without Flower, LiRA on every model, its report."""
