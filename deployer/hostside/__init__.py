"""Code that runs on the cron host: standard library only."""
