"""Exception type for mistakes a user can fix (bad path, bad option), as opposed to bugs.

The console scripts catch :class:`UserError` and print its message without a traceback, so raising it
is the way to say "this is your input, not our code".
"""

from __future__ import annotations


class UserError(Exception):
    """A problem caused by user input (configuration, paths, checkpoints) with an actionable message."""
