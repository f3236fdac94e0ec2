"""The runner behind `fedge simulate`: settings from scenario files and flags, Flower's simulation engine."""
