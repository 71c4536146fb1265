"""Launch backends: each turns a Plan into one LaunchSpec; `launcher.launch.spawn` is the one place that starts it."""
