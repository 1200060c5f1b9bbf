"""Export a trained student into device bundles: ONNX lowerings, head file, golden vectors, manifest."""
