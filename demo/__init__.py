"""make demo: the whole LUMEN paper in miniature, offline, on a CPU (``python -m demo``).

It drives the factory and downstream commands, so it lives outside both packages:
demo.stages runs the stages (``Demo``, ``DemoConfig``), demo.report renders the markdown report.
"""
