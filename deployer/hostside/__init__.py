"""Where the host-side code lived before it was split into deployer/contract and deployer/host.

Only `agent.py` stays, for a host whose boot units (written by an older deployer) still start
`python3 -m deployer.hostside.agent`: a crash between the new archive and the new units must not
leave the boot's hold or recovery without its program. The next push rewrites those units.
"""
