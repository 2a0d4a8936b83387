"""Training: the train state, the pure jitted steps, the ways batches reach them, the epoch loop."""
