"""Benchmarks of the uploader against real servers; run with ``./bench/run`` (see README.md).

Every row starts from the same PostgreSQL and OpenSSH sshd that the integration tests use
(``tests/servers``) and measures the uploader side by side with a reference in the same run,
so that the ratios hold on a noisy machine even when the absolute numbers do not.
"""
