"""The collapse benchmark (issue 4): facegan's collapse scoring against ground-truth mode counts.
"""
