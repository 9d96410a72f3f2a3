"""The errors every part of the project raises at start-up.

    Exception
     └── SettingsError   a setting has a value that cannot work; the command line prints
                         its message (one line, naming the setting) and exits 2

Library code raises these and never `SystemExit`: only a `cli.main` decides to exit.
"""

from __future__ import annotations


class SettingsError(Exception):
    """A setting has a value that cannot work. The message names the setting and the value."""
