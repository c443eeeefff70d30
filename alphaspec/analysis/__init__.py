"""The engine that turns a weights source into a results table (one row per matrix), its split over the
ranks of a torchrun job, `diff` between checkpoints, and the results table's files."""
