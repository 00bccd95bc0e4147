"""The one door to the cluster: every redis-py import, the script runner, key names and ACL users."""
