"""Calibration: measure what a scenario assumes (compute on a device, the network path).

``compute`` times a model's forward passes with torch; ``link`` times a TCP path and the
wire protocol's messages (numpy and the standard library only). Importing this package
imports neither torch nor the submodules, so the CLI and the simulator stay light.
"""
