"""The launch edge: job.py (the one orchestration: checks -> lease -> artifacts -> preflight -> supervised run),
spawn.py (the one call site that starts a process tree, and Ctrl-C), supervisor.py (restarts, preemption, the final
paragraph of a failed job), summary.py (what the console shows before a launch), lease_holder.py (the run dir's
lease, the launcher's side).

Takes the Plan; never the user's config. May import: launcher.plan, launcher.render, launcher.backends,
launcher.preflight, launcher.checkpoint (to find what a run resumes from), launcher.script (its launch side),
launcher.config.services (the outside services checked before a launch) and the shared modules (errors, secrets,
rundir, lease).
"""
