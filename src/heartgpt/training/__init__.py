"""Training: the LightningModules, their optimiser, callbacks, loggers and run bookkeeping.

Stage two of the data's path (recordings -> :mod:`heartgpt.data` shards -> training ->
:mod:`heartgpt.inference`). ``python -m heartgpt.train`` composes these from ``conf/``.
"""
