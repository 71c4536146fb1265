"""Launch backends: each turns a Plan into one LaunchSpec; `launcher.spawn` is the one place that starts it."""
