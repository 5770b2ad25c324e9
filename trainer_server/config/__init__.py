"""The trainer configuration: ``schema`` (the frozen types), ``loading`` (YAML and command
line -> validated ``RunOptions``), ``support`` (what Tandem can train yet)."""
