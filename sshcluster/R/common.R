# ---------------------------------------------------------------------------
# What both launches share: replacing the cluster of an earlier source(), and
# registering the cluster with foreach and future.
# ---------------------------------------------------------------------------

# Sourcing the file again stops the cluster the first source() started.
stop_previous <- function() {
  old <- get0("sshcluster_stop", envir = globalenv(), inherits = FALSE)
  if (is.function(old) && isTRUE(attr(old, "sshcluster"))) {
    message("sshcluster: stopping the cluster that an earlier source() started")
    old()
  }
}

register <- function(what, cl) {
  if ("doparallel" %in% what) doParallel::registerDoParallel(cl)
  if ("future" %in% what) future::plan(future::cluster, workers = cl)
}

# Marks a function of ours, so that a later source() knows it may call it.
ours <- function(f) {
  attr(f, "sshcluster") <- TRUE
  f
}
