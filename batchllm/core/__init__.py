"""Types every layer above shares: a request and its prefix group, one iteration's plan, preemption costs."""
