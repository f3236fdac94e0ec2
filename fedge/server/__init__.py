"""Server side: the ServerApp, strategy choice, the compression phase, signing and redistribution."""
