"""What every process needs at run time: settings, logs, metrics, traces, console scripts, health probes."""
