"""Code that runs ON a node (NAS or compute), shipped there inside a zipapp.

Standard library only; imports nothing from the frontend layers (cli, workflows, state,
transport, config).
"""
