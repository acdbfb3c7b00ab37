"""Video input and output: probing, streaming decode, encoding with audio, resumable rendering, comparisons."""
