"""devicefit.agent."""
