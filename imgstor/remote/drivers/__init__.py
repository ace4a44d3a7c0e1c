"""One module per storage tool: read functions parse real output into dataclasses; change
functions return argv lists.  Standard library only."""
