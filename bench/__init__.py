"""Benchmarks: memsession next to its peers, measured in the same run, printed as ratios."""
