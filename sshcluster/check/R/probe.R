a <- commandArgs(TRUE)
step_rscript <- function() {
  cat("R_VERSION=", as.character(getRversion()), "\nT_RSTART=",
      proc.time()[["elapsed"]], "\n", sep = "")
  # (the workers' own test: r_version.R, pasted before this file)
  old <- r_too_old()
  if (!is.null(old)) cat("R_TOO_OLD=", old, "\n", sep = "")
}
# worker_output: DIR, tried as the workers try it (worker_output.R, pasted before this
# file); nothing is written to the file.
step_worker_output <- function(output) {
  to <- output_log(output)
  if (is.null(to$why)) cat("OUTPUT_LOG=", to$log, "\n", sep = "")
  else cat("OUTPUT_ERR=", gsub("[\r\n]+", " ", to$why), "\n", sep = "")
}
step_packages <- function(pk) {
  t0 <- Sys.time()
  found <- basename(find.package(pk, quiet = TRUE))
  cat("R_MISSING=", paste(setdiff(pk, found), collapse = ","), "\nT_PACKAGES=",
      as.numeric(Sys.time() - t0, units = "secs"), "\n", sep = "")
}
# What the registrations (register:) need, loaded as the launch loads it (R/common.R's
# check_register): found is not loadable (a dependency missing, a build for another R).
# `libs`: sshcluster's library first where the launch puts it (step_environment's).
step_loads <- function(pk, libs = .libPaths()) {
  .libPaths(libs)
  for (p in pk) {
    why <- tryCatch({
      loadNamespace(p)
      ""
    }, error = function(e) conditionMessage(e))
    if (nzchar(why)) cat("R_NOLOAD=", p, " ", gsub("[[:space:]]+", " ", why), "\n", sep = "")
  }
}
#@callback
#@environment
step_rscript()
#@output
#@packages
# (the nonce: in the environment; in a container, probe.sh's r_boot put it there from
# the first line on stdin)
if (a[2] != "0") step_callback(a[1], as.integer(a[2]), as.numeric(a[3]),
                               Sys.getenv("SSHCLUSTER_NONCE"))
