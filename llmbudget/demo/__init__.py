"""`llmbudget demo`: the proxy and dashboard with a simulated upstream and simulated agents, no API key needed."""
