"""tfmot integration: quantizer, configs, scheme and the model-level verbs."""
