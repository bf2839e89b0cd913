"""leaderboard: normalised result entries, the board built from them, and the regression check."""
