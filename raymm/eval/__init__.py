"""Offline evaluation: top-K metrics (``metrics``), the test and cold-start protocols over any
scorer (``evaluate``), the ranking stage (``rank``, ``pointwise``) and the ablation report's
rendering (``report``). Nothing here imports ``raymm.training``.
"""
