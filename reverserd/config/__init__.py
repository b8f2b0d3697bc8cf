"""The config plane: GitProvider, GitTarget, WatchRule and ClusterWatchRule, validated and resolved.

:mod:`.rules` compiles rules into predicates, :mod:`.model` parses and validates each kind,
:mod:`.status` holds conditions and the board the engines report to, and :mod:`.plane` keeps it
all current from the API server and writes status only when it changes.
"""
