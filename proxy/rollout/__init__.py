"""Automated rollouts: a route moved to another upstream step by step, each step judged on what
the proxies measured on both arms, rolled back by itself when the evidence says so.

    table/rollout.py   the `rollout:` block of a route (pure schema)
    model.py           a rollout's state (pure)
    transitions.py     how it changes, and the driver's next move (pure)
    analysis.py        a step's analysis (pure)
    control.py         the operations: start, pause, resume, promote, abort (CLI and admin API)
    store.py           where rollouts are kept (file or Redis) and the drivers' lease
    driver.py          the task in every replica that moves rollouts while it holds the lease
    evidence.py        what the proxies measured, the shadow and the gates, for the analyses
    webhooks.py        the webhooks a rollout calls
    cli.py             `strangler rollout`

Nothing is imported here: `strangler` builds its command tree from cli.py without the model.
"""
