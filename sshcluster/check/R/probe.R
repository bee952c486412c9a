a <- commandArgs(TRUE)
step_rscript <- function() {
  cat("R_VERSION=", as.character(getRversion()), "\nT_RSTART=",
      proc.time()[["elapsed"]], "\n", sep = "")
}
step_packages <- function(pk) {
  t0 <- Sys.time()
  found <- basename(find.package(pk, quiet = TRUE))
  cat("R_MISSING=", paste(setdiff(pk, found), collapse = ","), "\nT_PACKAGES=",
      as.numeric(Sys.time() - t0, units = "secs"), "\n", sep = "")
}
#@callback
#@environment
step_rscript()
#@packages
# (the nonce: in the environment; in a container, probe.sh's r_boot put it there from
# the first line on stdin)
if (a[2] != "0") step_callback(a[1], as.integer(a[2]), as.numeric(a[3]),
                               Sys.getenv("SSHCLUSTER_NONCE"))
