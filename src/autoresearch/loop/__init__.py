"""The research loop: run experiments, judge them against the noise, keep or discard, never lose one."""
