"""Child processes (-> core, run, results): the one supervisor that runs cases in reused children and turns
crashes and hangs into statuses."""
