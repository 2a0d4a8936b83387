"""Fault drills: real commands killed, damaged, crowded, fed bad input or failing to write.

``faults.py`` (the fault matrix), ``bad_input.py`` (the bad-input fuzz) and ``write_faults.py``
(a write failure at every write site) each run as a script, ``python tests/drills/faults.py``;
the tests import them as this package (``from drills import faults``: pytest puts ``tests/`` on
``sys.path``). ``common.py`` holds what they share.
"""
