"""The systems under test: the faithful port of the seed, its hardened twin, the naive control,
the claim strategies they use, and the token server that puts any of them on HTTP.

The harness reaches them only through ``harness.targets`` (by name, like any reviewer's target),
so nothing here is special to the checks.
"""
