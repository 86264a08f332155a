"""Code that runs on the cron host: standard library only (the alert sender may use requests)."""
