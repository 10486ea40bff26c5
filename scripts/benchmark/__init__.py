"""The benchmark behind scripts/bench.py, one concern per module, in the order
a run uses them: ``cli`` reads the options and runs the rounds, ``servers``
starts the servers under test, ``load`` drives them, ``measure`` reads what
each side used, and ``report`` makes the figures into the table and the JSON;
``forged``, a part of its own, counts what NTP requests forged from a client's
address leave that client.
"""
