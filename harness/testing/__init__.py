"""Test support shipped with the package, so reviewers' own test suites can reuse it."""
