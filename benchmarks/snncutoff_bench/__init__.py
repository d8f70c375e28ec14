"""snncutoff-bench: click commands that benchmark cutoff across SNN frameworks."""
