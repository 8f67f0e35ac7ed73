"""Decision rules and their certificates: when to stop (calibrate), which answers to return (conformal sets and
selection), when to abstain (selective), which model to use (routing), how much to spend (budget) and which answer
to pick among chains (aggregation). Each turns replayed losses into a certified rule; none runs a model."""
