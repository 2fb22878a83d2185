"""Open Inference Protocol (KServe V2): tensors, codecs and the shared data plane."""
