"""The chaos campaign: a real engine, real servers, random faults, and a strict audit at the end.

``python -m chaos --help`` (with ``tests/`` on the path; ``scripts/chaos`` does that) runs it
from the command line; ``test_campaign.py`` runs a short one in the test suite. See the
"Chaos campaign" section of the README.
"""
