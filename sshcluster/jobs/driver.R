# sshcluster run: the R session of a job. It sources the job's rendered bootstrap
# (parallelCluster ready), then the user's script, as Rscript would run it: an error
# ends R with status 1, quit(status = n) with n, and commandArgs(TRUE) are the job's
# ARGS. The times it notes (seconds since the epoch) let the job tell the launch's time
# from the script's own.
local({
  run_dir <- Sys.getenv("SSHCLUSTER_RUN_DIR")
  note <- function(name, value) writeLines(value, file.path(run_dir, name))
  note("r-version", paste(R.version$major, R.version$minor, sep = "."))
  note("r-started", format(as.numeric(Sys.time()), digits = 15))
  source(Sys.getenv("SSHCLUSTER_BOOTSTRAP"), local = FALSE)
  note("launched", format(as.numeric(Sys.time()), digits = 15))
})
source(Sys.getenv("SSHCLUSTER_SCRIPT"), local = FALSE)
local({
  writeLines(format(as.numeric(Sys.time()), digits = 15),
             file.path(Sys.getenv("SSHCLUSTER_RUN_DIR"), "script-done"))
  if (exists("sshcluster_stop", envir = globalenv())) sshcluster_stop()
})
