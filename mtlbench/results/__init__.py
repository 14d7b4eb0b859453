"""The results store and everything read from it: protocol grouping, statistics,
significance tests, reports, tables, plots."""
