"""serve-app: ML model serving on Ray Serve with the Open Inference Protocol."""

__version__ = "0.1.0"
