"""A stand-in third-party module for the entry-point test (its PROBLEM is set by the test)."""

PROBLEM = None
