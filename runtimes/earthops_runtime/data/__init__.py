"""Data libraries of the EODataset runtime: sources, synthetic scenes, readers on a common grid,
chips, features, validation, statistics, shards and the training loader."""
