"""Task heads: what a fine-tune predicts from the GPT's outputs and how it is scored.

- :mod:`~heartgpt.heads.reductions`: how the per-position outputs are read (poolings, strides);
- :mod:`~heartgpt.heads.objectives`: losses, predictions and metrics of classes and values;
- :mod:`~heartgpt.heads.task_head`: the :class:`TaskHead` and the record of a head kind;
- :mod:`~heartgpt.heads.builtin`: the kinds heartgpt ships (classify, regress, tag);
- :mod:`~heartgpt.heads.registry`: the registry of kinds and :func:`build_head`;
- :mod:`~heartgpt.heads.legacy`: the heads of checkpoints from before heads were config.
"""
