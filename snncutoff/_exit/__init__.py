"""The machinery of :mod:`snncutoff.early_exit`: feeds of samples, and the loop that runs them."""
