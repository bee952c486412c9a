# ---------------------------------------------------------------------------
# What both launches share: replacing the cluster of an earlier source(), and
# registering the cluster with foreach and future.
# ---------------------------------------------------------------------------

# Every fast launch of this R session, by id, for every cluster file sourced in it
# (each has its own copy of this code): options() is the one place they all see.
launches <- function() {
  registry <- getOption("sshcluster.launches")
  if (!is.environment(registry)) {
    registry <- new.env()
    options(sshcluster.launches = registry)
  }
  registry
}

# Sourcing a cluster file again stops the cluster an earlier source() started:
# the one its sshcluster_stop() stops, and any other still running (its names
# in the global environment may have been removed, the cluster lives on).
stop_previous <- function() {
  old <- get0("sshcluster_stop", envir = globalenv(), inherits = FALSE)
  running <- mget(ls(launches()), envir = launches())
  if ((is.function(old) && isTRUE(attr(old, "sshcluster"))) || length(running))
    message("sshcluster: stopping the cluster that an earlier source() started")
  if (is.function(old) && isTRUE(attr(old, "sshcluster"))) old()
  for (S in running) if (is.function(S$stop)) S$stop()
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

# The option that adds the inventory's known_hosts file, in the form this
# machine's ssh takes (KnownHostsCommand came with OpenSSH 8.5); "" without one.
known_hosts_words <- function(forms) {
  if (is.null(forms)) return("")
  version <- tryCatch(system2("ssh", "-V", stdout = TRUE, stderr = TRUE),
                      error = function(e) "", warning = function(w) "")
  m <- regmatches(version, regexec("OpenSSH_([0-9]+)[.]([0-9]+)", version))[[1]]
  old <- length(m) == 3L && (as.integer(m[2]) < 8L ||
                             (as.integer(m[2]) == 8L && as.integer(m[3]) < 5L))
  forms[[if (old) "before_8_5" else "current"]]
}
