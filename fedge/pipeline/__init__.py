"""Plain orchestration without Flower: the stage chain, sweeps, shipping, run directories, reports."""
