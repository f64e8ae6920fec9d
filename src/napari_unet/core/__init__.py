"""The napari-free core: numpy, scipy, scikit-image and torch only."""
