"""Adapters that connect eggroll_opt to other libraries (installed as ``eggroll_opt.integrations``).

Each adapter imports its library lazily; the core package never imports this one.
"""
