"""Evaluation: the bench over bundled sets (bench, decisions), the hindsight oracle, the published rules side by side
(anchors) and the reports. Above the decision rules: it calls them, they never call it."""
