"""Client side: the Flower ClientApp handlers and the torch-free device runtime."""
