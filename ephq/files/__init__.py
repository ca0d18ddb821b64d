"""The file-system storage engine behind :class:`ephq.Queue`. Imports nothing above it."""
