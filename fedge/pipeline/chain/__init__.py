"""The compression chain: ordered stages, each one config (built by `from_run`) and one verb."""
