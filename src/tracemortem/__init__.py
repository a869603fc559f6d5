"""tracemortem."""
