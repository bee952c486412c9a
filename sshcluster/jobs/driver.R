# sshcluster run: the R session of a job. It sources the job's rendered bootstrap
# (parallelCluster ready), then the user's script, as Rscript would run it: an error
# ends R with status 1, quit(status = n) with n, and commandArgs(TRUE) are the job's
# ARGS. The times it notes (seconds since the epoch) let the job tell the launch's time
# from the script's own.
# stdbuf (coreutils) makes R's stdout line-buffered through LD_PRELOAD: for R itself,
# not for every process R starts (the cluster's supervisor, its ssh sessions).
local({
  preload <- strsplit(Sys.getenv("LD_PRELOAD"), "[: ]+")[[1]]
  if (any(grepl("libstdbuf", preload, fixed = TRUE))) {
    rest <- preload[!grepl("libstdbuf", preload, fixed = TRUE) & nzchar(preload)]
    if (length(rest)) Sys.setenv(LD_PRELOAD = paste(rest, collapse = ":"))
    else Sys.unsetenv("LD_PRELOAD")
    Sys.unsetenv("_STDBUF_O")
  }
})
local({
  run_dir <- Sys.getenv("SSHCLUSTER_RUN_DIR")
  note <- function(name, value) writeLines(value, file.path(run_dir, name))
  note("r-version", paste(R.version$major, R.version$minor, sep = "."))
  note("r-started", format(as.numeric(Sys.time()), digits = 15))
  # 'sshcluster run' starts R while it checks the hosts: wait for its word.
  if (nzchar(Sys.getenv("SSHCLUSTER_WAIT_GO"))) {
    Sys.unsetenv("SSHCLUSTER_WAIT_GO")
    con <- file("stdin")
    go <- readLines(con, n = 1L)
    close(con)
    if (!identical(go, "go")) quit(save = "no", status = 1L)
  }
  source(Sys.getenv("SSHCLUSTER_BOOTSTRAP"), local = FALSE)
  note("launched", format(as.numeric(Sys.time()), digits = 15))
})
source(Sys.getenv("SSHCLUSTER_SCRIPT"), local = FALSE)
local({
  writeLines(format(as.numeric(Sys.time()), digits = 15),
             file.path(Sys.getenv("SSHCLUSTER_RUN_DIR"), "script-done"))
  if (exists("sshcluster_stop", envir = globalenv())) sshcluster_stop()
  writeLines(format(as.numeric(Sys.time()), digits = 15),
             file.path(Sys.getenv("SSHCLUSTER_RUN_DIR"), "cluster-stopped"))
})
