"""The contract both sides agree on: what the deployer renders and asks, and what the cron host
runs and answers (options, channels, paths, protocol, records, rules, text, unit keys).

Standard library only: every module here also runs on the cron host, which has nothing but python3.
"""
