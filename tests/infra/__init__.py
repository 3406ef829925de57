"""Real test infrastructure: processes started by the tests on loopback (API server, S3, ...)."""
