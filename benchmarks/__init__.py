"""lrmath benchmark suites: ``python -m benchmarks`` lists them, ``python -m benchmarks NAME`` runs one."""
