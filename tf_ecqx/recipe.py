"""The fine-tuning recipe `tf-ecqx quantize` follows by default: three epochs, Adam's learning rate decaying from 1e-3
to 0 (cosine), per-layer lambda from the loss's sensitivity (allocate_rates). Over three seeds it was ahead of one and
of three epochs at a constant rate with the layer-size heuristic at matched bytes on the demo CNN and the MLP at 3 and
4 bit (BENCHMARKS.md, "Lever e"). Free of TensorFlow, so that the CLI's --help stays fast."""

EPOCHS = 3
LEARNING_RATE = 1e-3
# The first of each is the default.
LR_SCHEDULES = ("cosine", "constant")  # LEARNING_RATE decaying to 0 over the run (CosineDecay), or kept
LAYER_LAMBDAS = ("sensitivity", "size")  # per-layer lambda from allocate_rates, or the reference's size heuristic
