"""Tensor codec, chunked model/script store and run statistics: pure encode/decode plus Redis I/O."""
