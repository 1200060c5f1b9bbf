"""Training and evaluation data: real-dataset loaders, generated faces, torch wrappers.

Every sample is an aligned crop (edge.alignment) labelled over edge.labels.DEFAULT_LABELS,
so training sees exactly the geometry and label order the device uses.
"""
