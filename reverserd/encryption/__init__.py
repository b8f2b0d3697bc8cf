"""Secrets reach Git only SOPS-encrypted for age recipients, and never rest in plain text.

:mod:`.sops` runs the standard ``sops`` and ``age-keygen`` binaries, :mod:`.keys` resolves a
GitTarget's ``spec.encryption`` into recipients (or the reason it cannot), and
:mod:`.fingerprint` gives the keyed fingerprint that tells whether a Secret changed without
storing anything that reveals its value.
"""
