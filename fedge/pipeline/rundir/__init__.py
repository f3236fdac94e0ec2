"""Run directories: file names, staged directories, resume bookkeeping and checkpoints."""
